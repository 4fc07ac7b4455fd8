//! The legacy download routes (`/download_csv/`, `/download_csv_tv/`, `/download_csv_wether/`,
//! `/download_excel/`): HTTP glue over [`crate::export`].
//!
//! The export runs on a blocking thread and hands the body over in chunks through a bounded channel:
//! when the client reads slowly the channel fills, the export thread waits, and neither the hub's
//! memory nor its async workers pay for it. A client that goes away closes the channel, which stops
//! the export. An export that fails after the first byte aborts the response (the client sees a
//! broken transfer, never a silently short file).

use std::io::{self, Write};
use std::path::Path;
use std::sync::{Arc, OnceLock};

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures_util::StreamExt;
use tokio::sync::{mpsc, Semaphore};

use super::{ApiError, AppState};
use crate::export::{self, Export, PreparedXlsx, TimeRange};

/// Bytes handed to the client at a time.
const CHUNK_BYTES: usize = 64 * 1024;
/// Chunks waiting for the client at most (per export).
const CHANNEL_CHUNKS: usize = 4;
/// Exports running at once; more wait their turn (each holds a SQLite connection and a thread).
const CONCURRENT_EXPORTS: usize = 2;

/// The response header set when rows were left out (Excel's row limit).
pub const TRUNCATED_HEADER: &str = "x-export-truncated";

/// The four downloads, each with and without the trailing slash, GET only.
pub fn routes() -> Router<AppState> {
    let mut router = Router::new();
    for export in Export::ALL {
        let path = route(export);
        let handler = get(
            move |State(app): State<AppState>, Query(params): Query<Vec<(String, String)>>| {
                download(app, params, export)
            },
        );
        router = router
            .route(path, handler.clone())
            .route(&format!("{path}/"), handler);
    }
    router
}

/// The old backend's path (without the trailing slash).
pub fn route(export: Export) -> &'static str {
    match export {
        Export::LightCsv => "/download_csv",
        Export::TvCsv => "/download_csv_tv",
        Export::ClimateCsv => "/download_csv_wether",
        Export::LightXlsx => "/download_excel",
    }
}

/// Parses `?since=` / `?until=` (RFC 3339); anything else is refused so a typo cannot silently
/// export everything.
pub fn parse_range(params: &[(String, String)]) -> Result<TimeRange, ApiError> {
    let bad = |msg: String| ApiError::new(StatusCode::BAD_REQUEST, msg);
    let mut range = TimeRange::default();
    for (name, value) in params {
        let slot = match name.as_str() {
            "since" => &mut range.since_ms,
            "until" => &mut range.until_ms,
            other => {
                return Err(bad(format!(
                    "{other}: unknown parameter (expected since, until)"
                )))
            }
        };
        if slot.is_some() {
            return Err(bad(format!("{name}: given more than once")));
        }
        let time = chrono::DateTime::parse_from_rfc3339(value).map_err(|e| {
            let hint = if value.contains(' ') {
                " (a + in a URL reads as a space: write it as %2B)"
            } else {
                ""
            };
            bad(format!(
                "{name}: {value:?} is not an RFC 3339 time like 2024-05-01T00:00:00Z: {e}{hint}"
            ))
        })?;
        *slot = Some(time.timestamp_millis());
    }
    if let (Some(since), Some(until)) = (range.since_ms, range.until_ms) {
        if until <= since {
            return Err(bad("until: must be later than since".into()));
        }
    }
    Ok(range)
}

/// What the export thread tells the response.
enum Msg {
    /// The Excel rows are on disk (sent before the file's first byte).
    Ready {
        truncated: bool,
    },
    Data(Bytes),
    /// Everything was sent.
    Done,
    Failed(String),
}

async fn download(app: AppState, params: Vec<(String, String)>, export: Export) -> Response {
    let range = match parse_range(&params) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    static SLOTS: OnceLock<Arc<Semaphore>> = OnceLock::new();
    let slots = SLOTS.get_or_init(|| Arc::new(Semaphore::new(CONCURRENT_EXPORTS)));
    let Ok(permit) = slots.clone().acquire_owned().await else {
        return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "exports are shutting down")
            .into_response();
    };
    let (tx, mut rx) = mpsc::channel(CHANNEL_CHUNKS);
    let db = app.db_path.clone();
    tokio::task::spawn_blocking(move || {
        run_export(export, &db, range, tx);
        drop(permit);
    });

    let mut truncated = false;
    let first = loop {
        match rx.recv().await {
            Some(Msg::Ready { truncated: t }) => truncated = t,
            Some(Msg::Data(bytes)) => break Some(bytes),
            Some(Msg::Done) => break None,
            Some(Msg::Failed(why)) => {
                return ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("export failed: {why}"),
                )
                .into_response()
            }
            None => {
                return ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "export failed: it stopped unexpectedly (see the hub's log)",
                )
                .into_response()
            }
        }
    };
    let rest = futures_util::stream::unfold(Some(rx), |rx| async move {
        let mut rx = rx?;
        loop {
            return match rx.recv().await {
                Some(Msg::Data(bytes)) => Some((Ok(bytes), Some(rx))),
                Some(Msg::Ready { .. }) => continue,
                Some(Msg::Done) => None,
                Some(Msg::Failed(why)) => Some((Err(io::Error::other(why)), None)),
                // The thread ended without saying Done (it panicked): abort, never end cleanly.
                None => Some((Err(io::Error::other("export stopped unexpectedly")), None)),
            };
        }
    });
    let body = match first {
        Some(first) => Body::from_stream(
            futures_util::stream::once(async move { Ok::<_, io::Error>(first) }).chain(rest),
        ),
        None => Body::empty(),
    };
    let disposition = format!("attachment; filename=\"{}\"", export.file_name());
    let mut response = (
        [
            (header::CONTENT_TYPE, export.content_type().to_owned()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        body,
    )
        .into_response();
    if truncated {
        response
            .headers_mut()
            .insert(TRUNCATED_HEADER, HeaderValue::from_static("true"));
    }
    response
}

/// The blocking half: writes the export into the channel and says how it ended.
fn run_export(export: Export, db: &Path, range: TimeRange, tx: mpsc::Sender<Msg>) {
    let mut out = ChunkWriter::new(tx.clone());
    let result = match export {
        Export::LightXlsx => {
            // Constant-memory mode keeps the rows in a temporary file: next to the database (a real
            // disk with room: /tmp is often a small RAM disk on a Raspberry Pi).
            let tempdir = db
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(std::env::temp_dir);
            PreparedXlsx::prepare(db, range, &tempdir).and_then(|prepared| {
                let truncated = prepared.summary.truncated;
                if truncated {
                    tracing::warn!(
                        rows = prepared.summary.rows,
                        "Excel export stopped at Excel's row limit; the rest needs ?since="
                    );
                }
                let _ = tx.blocking_send(Msg::Ready { truncated });
                prepared.save(&mut out)
            })
        }
        csv => export::write_csv(db, csv.kind(), range, &mut out),
    };
    match result.and_then(|summary| out.finish().map(|()| summary).map_err(Into::into)) {
        Ok(summary) => {
            tracing::debug!(
                file = export.file_name(),
                rows = summary.rows,
                "export sent"
            );
            let _ = tx.blocking_send(Msg::Done);
        }
        Err(_) if out.client_gone => {
            tracing::debug!(
                file = export.file_name(),
                "export stopped: the client went away"
            );
        }
        Err(e) => {
            tracing::warn!(file = export.file_name(), error = %e, "export failed");
            let _ = tx.blocking_send(Msg::Failed(e.to_string()));
        }
    }
}

/// A `Write` that hands full chunks to the response, waiting while the client is behind.
struct ChunkWriter {
    tx: mpsc::Sender<Msg>,
    buf: Vec<u8>,
    client_gone: bool,
}

impl ChunkWriter {
    fn new(tx: mpsc::Sender<Msg>) -> ChunkWriter {
        ChunkWriter {
            tx,
            buf: Vec::with_capacity(CHUNK_BYTES),
            client_gone: false,
        }
    }

    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK_BYTES));
        if self.tx.blocking_send(Msg::Data(chunk.into())).is_err() {
            self.client_gone = true;
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the client went away",
            ));
        }
        Ok(())
    }

    /// Sends what is left.
    fn finish(&mut self) -> io::Result<()> {
        self.send()
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.client_gone {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK_BYTES {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        // Chunks leave when full or at the end: flushing every small write would only add overhead.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn range_parameters() {
        let ok = |pairs: &[(&str, &str)]| match parse_range(&params(pairs)) {
            Ok(r) => r,
            Err(e) => panic!("{}", e.message),
        };
        assert_eq!(ok(&[]), TimeRange::default());
        let r = ok(&[
            ("since", "2024-05-01T00:00:00Z"),
            ("until", "2024-05-01T03:00:00+02:00"),
        ]);
        assert_eq!(r.since_ms, Some(1_714_521_600_000));
        assert_eq!(r.until_ms, Some(1_714_521_600_000 + 3_600_000));
        for (pairs, field) in [
            (vec![("since", "yesterday")], "since: "),
            (vec![("until", "2024-05-01")], "until: "),
            (vec![("since", "2024-05-01T00:00:00 02:00")], "%2B"),
            (vec![("snce", "2024-05-01T00:00:00Z")], "snce: unknown"),
            (
                vec![
                    ("since", "2024-05-01T00:00:00Z"),
                    ("since", "2024-05-02T00:00:00Z"),
                ],
                "since: given more than once",
            ),
            (
                vec![
                    ("since", "2024-05-02T00:00:00Z"),
                    ("until", "2024-05-01T00:00:00Z"),
                ],
                "until: must be later",
            ),
        ] {
            let Err(err) = parse_range(&params(&pairs)) else {
                panic!("{pairs:?} accepted");
            };
            assert_eq!(err.status, StatusCode::BAD_REQUEST);
            assert!(err.message.contains(field), "{}", err.message);
        }
    }
}
