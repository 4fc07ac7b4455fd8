//! The legacy downloads over real HTTP: exact CSV bytes for known rows, the Excel file read back with
//! calamine, since/until, methods and bad input.

use std::io::Cursor;

use calamine::{Data, Reader, Xlsx};
use chrono::{TimeZone, Utc};
use rusqlite::{params, Connection};

use crate::support::TestHub;

const CSV: &str = "text/csv; charset=utf-8";
const XLSX: &str = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet";

fn ms(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32, milli: i64) -> i64 {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, s)
        .unwrap()
        .timestamp_millis()
        + milli
}

/// Seconds since midnight, as the importer stores a CSV's time of day.
fn secs(h: u32, m: u32, s: u32, micros: u32) -> f64 {
    f64::from(h * 3600 + m * 60 + s) + f64::from(micros) / 1e6
}

/// The columns every reading table shares. The local-time columns hold values that differ from
/// the UTC ones on purpose: live rows must export UTC time, day and month (see `export`'s doc).
struct Common {
    measured_ms: i64,
    received_ms: i64,
    time_of_day_s: f64,
    day_of_week: i64,
    month: i64,
    backdated: bool,
    source: &'static str,
}

fn live(measured_ms: i64) -> Common {
    Common {
        measured_ms,
        received_ms: measured_ms,
        time_of_day_s: 1.0,
        day_of_week: 4,
        month: 11,
        backdated: false,
        source: "mqtt",
    }
}

fn backdated(measured_ms: i64) -> Common {
    Common {
        received_ms: measured_ms + 3 * 86_400_000,
        backdated: true,
        source: "http",
        ..live(measured_ms)
    }
}

/// An imported row: its date is unknown, so `measured_ms` is made up (here 1970-01-01, a Thursday
/// in January) and the CSV's time of day, day and month are stored as they were.
fn imported(time_of_day_s: f64, day_of_week: i64, month: i64) -> Common {
    Common {
        measured_ms: 86_400_000 + 1234,
        received_ms: ms(2024, 6, 1, 12, 0, 0, 0),
        time_of_day_s,
        day_of_week,
        month,
        backdated: false,
        source: "import",
    }
}

fn insert_light(
    db: &Connection,
    c: Common,
    temperature: f64,
    motion: bool,
    light: f64,
    active: Option<bool>,
    weather: Option<&str>,
) {
    db.execute(
        "INSERT INTO light_readings (node_id, measured_ms, received_ms, time_of_day_s, day_of_week, month,
         backdated, source, temperature, motion, light_intensity, active, label_source, weather)
         VALUES ('n1', ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
        params![
            c.measured_ms,
            c.received_ms,
            c.time_of_day_s,
            c.day_of_week,
            c.month,
            c.backdated,
            c.source,
            temperature,
            motion,
            light,
            active,
            active.map(|_| "node"),
            weather
        ],
    )
    .unwrap();
}

fn insert_tv(db: &Connection, c: Common, motion: bool, channel: Option<i64>) {
    db.execute(
        "INSERT INTO tv_readings (node_id, measured_ms, received_ms, time_of_day_s, day_of_week, month,
         backdated, source, motion, channel, label_source)
         VALUES ('n1', ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        params![
            c.measured_ms,
            c.received_ms,
            c.time_of_day_s,
            c.day_of_week,
            c.month,
            c.backdated,
            c.source,
            motion,
            channel,
            channel.map(|_| "state")
        ],
    )
    .unwrap();
}

#[allow(clippy::too_many_arguments)]
fn insert_climate(
    db: &Connection,
    c: Common,
    temperature: f64,
    humidity: f64,
    motion: bool,
    fan: Option<i64>,
    outside: Option<(f64, f64, f64)>,
) {
    db.execute(
        "INSERT INTO climate_readings (node_id, measured_ms, received_ms, time_of_day_s, day_of_week, month,
         backdated, source, temperature, humidity, motion, fan_level, label_source,
         outside_temperature, outside_humidity, outside_luminosity)
         VALUES ('n1', ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
        params![
            c.measured_ms,
            c.received_ms,
            c.time_of_day_s,
            c.day_of_week,
            c.month,
            c.backdated,
            c.source,
            temperature,
            humidity,
            motion,
            fan,
            fan.map(|_| "node"),
            outside.map(|o| o.0),
            outside.map(|o| o.1),
            outside.map(|o| o.2)
        ],
    )
    .unwrap();
}

/// A second writer beside the hub's (WAL): fine for a test.
fn fixture(hub: &TestHub) {
    let db = Connection::open(hub.db_path()).unwrap();
    db.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
    // Sunday 23:45 UTC: the local columns say Thursday in November; the export says Sunday (7).
    insert_light(
        &db,
        live(ms(2024, 5, 5, 23, 45, 22, 619)),
        35.7,
        true,
        1001.0,
        Some(true),
        Some("dust"),
    );
    insert_light(
        &db,
        backdated(ms(2024, 4, 30, 16, 36, 3, 164)),
        23.0,
        false,
        0.0,
        Some(false),
        None,
    );
    insert_light(
        &db,
        imported(secs(16, 36, 3, 164_237), 7, 4),
        -25.8,
        true,
        65.0,
        Some(true),
        Some("few clouds"),
    );
    insert_light(
        &db,
        live(ms(2024, 5, 6, 8, 0, 0, 500)),
        0.1 + 0.2,
        true,
        1e16,
        None,
        Some("rain, \"heavy\""),
    );

    insert_tv(&db, live(ms(2024, 5, 6, 0, 0, 0, 0)), true, Some(3));
    insert_tv(&db, backdated(ms(2024, 5, 1, 9, 5, 7, 1)), false, Some(0));
    insert_tv(&db, imported(secs(17, 5, 46, 274_099), 3, 5), true, Some(2));
    insert_tv(&db, live(ms(2024, 5, 11, 12, 0, 0, 999)), false, None);

    insert_climate(
        &db,
        live(ms(2024, 4, 30, 16, 52, 26, 76)),
        25.0,
        70.0,
        true,
        Some(0),
        Some((30.0, 100.0, 1000.0)),
    );
    insert_climate(
        &db,
        imported(secs(17, 21, 19, 15_603), 3, 5),
        1.0,
        1.0,
        true,
        Some(6),
        None,
    );
    insert_climate(
        &db,
        backdated(ms(2024, 12, 31, 23, 59, 59, 999)),
        23.456,
        69.125,
        false,
        None,
        None,
    );
}

const LIGHT_CSV: &str = "id,timeOfDay,temperature,dayOfWeek,weatherConditions,motionDetection,LightIntensity,active\r\n\
1,23:45:22.619000,35.7,7,dust,Yes,1001.0,True\r\n\
2,16:36:03.164000,23.0,2,,No,0.0,False\r\n\
3,16:36:03.164237,-25.8,7,few clouds,Yes,65.0,True\r\n\
4,08:00:00.500000,0.30000000000000004,1,\"rain, \"\"heavy\"\"\",Yes,1e+16,\r\n";

const TV_CSV: &str = "id,timeOfDay,dayOfWeek,motionDetection,channelOn\r\n\
1,00:00:00.000000,1,True,3\r\n\
2,09:05:07.001000,3,False,0\r\n\
3,17:05:46.274099,3,True,2\r\n\
4,12:00:00.999000,6,False,\r\n";

const CLIMATE_CSV: &str = "id,time,day,month,outside_temperature,room_temperature,outside_humidity,room_humidity,outside_luminosity,motionDetection,fanLevel\r\n\
1,16:52:26.076000,2,April,30.00,25.00,100.00,70.00,1000.00,True,0\r\n\
2,17:21:19.015603,3,May,,1.00,,1.00,,True,6\r\n\
3,23:59:59.999000,2,December,,23.46,,69.12,,False,\r\n";

struct Download {
    status: u16,
    content_type: String,
    disposition: String,
    truncated: Option<String>,
    body: Vec<u8>,
}

async fn download(hub: &TestHub, path: &str) -> Download {
    let resp = reqwest::get(hub.url(path)).await.unwrap();
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let content_type = header("content-type").unwrap_or_default();
    let disposition = header("content-disposition").unwrap_or_default();
    let truncated = header("x-export-truncated");
    let status = resp.status().as_u16();
    let body = resp.bytes().await.unwrap().to_vec();
    Download {
        status,
        content_type,
        disposition,
        truncated,
        body,
    }
}

async fn csv_body(hub: &TestHub, path: &str, file: &str) -> String {
    let d = download(hub, path).await;
    assert_eq!(
        d.status,
        200,
        "{path}: {}",
        String::from_utf8_lossy(&d.body)
    );
    assert_eq!(d.content_type, CSV, "{path}");
    assert_eq!(
        d.disposition,
        format!("attachment; filename=\"{file}\""),
        "{path}"
    );
    String::from_utf8(d.body).unwrap()
}

/// The sheet's cells, row by row.
fn sheet(bytes: Vec<u8>) -> Vec<Vec<Data>> {
    let mut book: Xlsx<_> = calamine::open_workbook_from_rs(Cursor::new(bytes)).unwrap();
    let name = book.sheet_names()[0].clone();
    let range = book.worksheet_range(&name).unwrap();
    assert_eq!(range.start(), Some((0, 0)), "the sheet starts at A1");
    range.rows().map(|r| r.to_vec()).collect()
}

fn s(text: &str) -> Data {
    Data::String(text.into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_match_the_legacy_bytes() {
    let hub = TestHub::start().await;

    // Empty tables: the header row alone, Excel included.
    let header_only = [
        ("/download_csv/", "light_dataset.csv", LIGHT_CSV),
        ("/download_csv_tv/", "tv_dataSert.csv", TV_CSV),
        ("/download_csv_wether/", "wether_dataset.csv", CLIMATE_CSV),
    ];
    for (path, file, full) in header_only {
        let header = &full[..full.find("\r\n").unwrap() + 2];
        assert_eq!(csv_body(&hub, path, file).await, header, "{path}");
    }
    let empty = download(&hub, "/download_excel/").await;
    assert_eq!(empty.status, 200);
    assert_eq!(empty.content_type, XLSX);
    assert_eq!(
        empty.disposition,
        "attachment; filename=\"light_data.xlsx\""
    );
    let header_row: Vec<Data> = [
        "id",
        "timeOfDay",
        "temperature",
        "dayOfWeek",
        "weatherConditions",
        "motionDetection",
        "LightIntensity",
        "active",
    ]
    .into_iter()
    .map(s)
    .collect();
    assert_eq!(sheet(empty.body), vec![header_row.clone()]);

    fixture(&hub);
    for (path, file, want) in [
        ("/download_csv/", "light_dataset.csv", LIGHT_CSV),
        ("/download_csv", "light_dataset.csv", LIGHT_CSV),
        ("/download_csv_tv/", "tv_dataSert.csv", TV_CSV),
        ("/download_csv_tv", "tv_dataSert.csv", TV_CSV),
        ("/download_csv_wether/", "wether_dataset.csv", CLIMATE_CSV),
        ("/download_csv_wether", "wether_dataset.csv", CLIMATE_CSV),
    ] {
        assert_eq!(csv_body(&hub, path, file).await, want, "{path}");
    }

    for path in ["/download_excel/", "/download_excel"] {
        let d = download(&hub, path).await;
        assert_eq!(d.status, 200, "{path}");
        assert_eq!(d.content_type, XLSX, "{path}");
        assert_eq!(d.truncated, None);
        let rows = sheet(d.body);
        assert_eq!(rows.len(), 5, "{path}: header + 4 rows");
        assert_eq!(rows[0], header_row);
        assert_eq!(
            rows[1],
            vec![
                Data::Float(1.0),
                s("23:45:22.619000"),
                Data::Float(35.7),
                Data::Float(7.0),
                s("dust"),
                s("Yes"),
                Data::Float(1001.0),
                Data::Bool(true)
            ]
        );
        assert_eq!(
            rows[2],
            vec![
                Data::Float(2.0),
                s("16:36:03.164000"),
                Data::Float(23.0),
                Data::Float(2.0),
                Data::Empty,
                s("No"),
                Data::Float(0.0),
                Data::Bool(false)
            ]
        );
        assert_eq!(rows[3][1], s("16:36:03.164237"), "imported time of day");
        assert_eq!(rows[3][3], Data::Float(7.0), "imported day");
        assert_eq!(rows[4][2], Data::Float(0.1 + 0.2), "full precision");
        assert_eq!(rows[4][4], s("rain, \"heavy\""));
        assert_eq!(rows[4][7], Data::Empty, "unlabelled");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn since_until_methods_and_bad_input() {
    let hub = TestHub::start().await;
    fixture(&hub);
    let light_rows = |ids: &[usize]| {
        let lines: Vec<&str> = LIGHT_CSV.split_inclusive("\r\n").collect();
        let mut out = lines[0].to_owned();
        for id in ids {
            out.push_str(lines[*id]);
        }
        out
    };
    // since inclusive, until exclusive, on the measured time; `+` written as %2B.
    for (query, ids) in [
        ("?since=2024-05-05T23:45:22.619Z", &[1, 4][..]),
        ("?since=2024-05-05T23:45:22.620Z", &[4][..]),
        ("?until=2024-05-06T08:00:00.500Z", &[2, 3, 1][..]),
        (
            "?since=2024-05-01T00:00:00%2B02:00&until=2024-05-06T10:00:00%2B02:00",
            &[1][..],
        ),
        ("?since=2030-01-01T00:00:00Z", &[][..]),
    ] {
        let mut want_ids: Vec<usize> = ids.to_vec();
        want_ids.sort();
        let body = csv_body(&hub, &format!("/download_csv/{query}"), "light_dataset.csv").await;
        assert_eq!(body, light_rows(&want_ids), "{query}");
    }
    let body = csv_body(
        &hub,
        "/download_csv_wether?since=2024-12-01T00:00:00Z",
        "wether_dataset.csv",
    )
    .await;
    assert!(body.ends_with("\r\n3,23:59:59.999000,2,December,,23.46,,69.12,,False,\r\n"));
    assert_eq!(body.matches("\r\n").count(), 2);

    let d = download(&hub, "/download_excel?since=2024-05-06T00:00:00Z").await;
    let rows = sheet(d.body);
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1][0], Data::Float(4.0));

    let client = reqwest::Client::new();
    for path in [
        "/download_csv/",
        "/download_csv",
        "/download_csv_tv/",
        "/download_csv_tv",
        "/download_csv_wether/",
        "/download_csv_wether",
        "/download_excel/",
        "/download_excel",
    ] {
        let resp = client.post(hub.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 405, "{path}");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["status"], "error", "{path}");

        for (query, field) in [
            ("?since=yesterday", "since: "),
            ("?until=2024-13-01T00:00:00Z", "until: "),
            ("?since=2024-05-01T00:00:00+02:00", "%2B"),
            ("?from=2024-05-01T00:00:00Z", "from: unknown parameter"),
            (
                "?since=2024-05-02T00:00:00Z&until=2024-05-01T00:00:00Z",
                "until: ",
            ),
        ] {
            let resp = client
                .get(hub.url(&format!("{path}{query}")))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 400, "{path}{query}");
            assert!(resp
                .headers()
                .get("content-type")
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("application/json"));
            let body: serde_json::Value = resp.json().await.unwrap();
            assert_eq!(body["status"], "error");
            let message = body["message"].as_str().unwrap();
            assert!(message.contains(field), "{path}{query}: {message}");
        }
    }
}

/// Clients that stop reading and go away must not keep exports busy: only two run at once, so a
/// leaked slot would make later downloads wait forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_downloads_free_their_slot() {
    let hub = TestHub::start().await;
    let mut db = Connection::open(hub.db_path()).unwrap();
    db.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
    // Enough rows (~12 MB of CSV) that a download cannot fit in the socket and channel buffers.
    let rows = 150_000i64;
    let tx = db.transaction().unwrap();
    {
        let mut stmt = tx
            .prepare(
                "INSERT INTO light_readings (node_id, measured_ms, received_ms, time_of_day_s, day_of_week,
                 month, backdated, source, temperature, motion, light_intensity, active, weather)
                 VALUES ('n1', ?1, ?1, 0, 1, 1, 0, 'mqtt', 21.5, 1, 300.25, 1, 'scattered clouds')",
            )
            .unwrap();
        for i in 0..rows {
            stmt.execute([1_700_000_000_000 + i * 1000]).unwrap();
        }
    }
    tx.commit().unwrap();

    let abandon = async {
        for _ in 0..3 {
            let mut resp = reqwest::get(hub.url("/download_csv/")).await.unwrap();
            assert_eq!(resp.status(), 200);
            assert!(resp.chunk().await.unwrap().is_some());
            drop(resp);
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(60), abandon)
        .await
        .expect("a third download starts once the first two are abandoned");
    // The last ten rows only (measured_ms of row i is 1_700_000_000_000 + (i - 1) s).
    let since = Utc
        .timestamp_millis_opt(1_700_000_000_000 + (rows - 10) * 1000)
        .unwrap()
        .to_rfc3339();
    let url = hub.url(&format!(
        "/download_csv/?since={}",
        since.replace('+', "%2B")
    ));
    let body = tokio::time::timeout(std::time::Duration::from_secs(60), async {
        reqwest::get(url).await.unwrap().text().await.unwrap()
    })
    .await
    .expect("a download after abandoned ones is served");
    assert_eq!(body.matches("\r\n").count(), 11, "{body}");
    assert!(body.ends_with(&format!(
        "{rows},15:53:19.000000,21.5,4,scattered clouds,Yes,300.25,True\r\n"
    )));
}
