//! The REST API over real HTTP: every legacy route in both dialects, bad input, `/api/v1`, the stream.

use std::time::Duration;

use futures_util::StreamExt;
use reqwest::Method;
use serde_json::{json, Value};
use smarthub::readings::ReadingKind;

use crate::support::*;

enum Body {
    None,
    Json(Value),
}

enum Expect {
    Json(Value),
    Text(&'static str),
}

struct Step {
    method: Method,
    path: &'static str,
    body: Body,
    status: u16,
    expect: Expect,
    /// (state topic, payload now published there)
    state: Option<(&'static str, &'static str)>,
}

fn step(
    method: Method,
    path: &'static str,
    body: Body,
    expect: Expect,
    state: Option<(&'static str, &'static str)>,
) -> Step {
    Step {
        method,
        path,
        body,
        status: 200,
        expect,
        state,
    }
}

fn ok(message: &str) -> Expect {
    Expect::Json(json!({"status": "success", "message": message}))
}

async fn call(
    client: &reqwest::Client,
    hub: &TestHub,
    method: Method,
    path: &str,
    body: &Body,
) -> reqwest::Response {
    let mut req = client.request(method, hub.url(path));
    if let Body::Json(v) = body {
        req = req.json(v);
    }
    req.send().await.unwrap()
}

async fn check(resp: reqwest::Response, status: u16, expect: &Expect, what: &str) {
    assert_eq!(resp.status().as_u16(), status, "{what}");
    let ctype = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    match expect {
        Expect::Json(v) => {
            assert!(ctype.starts_with("application/json"), "{what}: {ctype}");
            let got: Value = resp.json().await.unwrap();
            assert_eq!(&got, v, "{what}");
        }
        Expect::Text(t) => {
            assert!(ctype.starts_with("text/plain"), "{what}: {ctype}");
            assert_eq!(resp.text().await.unwrap(), *t, "{what}");
        }
    }
}

/// Waits for `payload` on a state topic (earlier, retained values are skipped).
async fn expect_state(sub: &mut Mqtt, topic: &str, payload: &str) {
    loop {
        let got = text(&sub.next_on(topic).await);
        if got == payload {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_legacy_route_in_both_dialects() {
    let mut hub = TestHub::start().await;
    let client = reqwest::Client::new();
    let mut sub = hub.mqtt("state-watch").await;
    sub.subscribe("smarthub/+/state").await;
    use Body::Json as J;
    use Method as M;
    let steps = vec![
        step(
            M::POST,
            "/switch_light/",
            J(json!({"iss": true})),
            ok("Light switched successfully"),
            Some(("light", "ON")),
        ),
        step(
            M::POST,
            "/switch_light",
            J(json!({"iss": false})),
            ok("Light switched successfully"),
            Some(("light", "OFF")),
        ),
        step(
            M::GET,
            "/switch_light/",
            Body::None,
            ok("Light switched successfully"),
            Some(("light", "ON")),
        ),
        step(
            M::GET,
            "/switch_light",
            Body::None,
            ok("Light switched successfully"),
            Some(("light", "OFF")),
        ),
        step(
            M::POST,
            "/switch_door/",
            J(json!({"state": true, "pin_code": "1234"})),
            ok("Door switched successfully"),
            Some(("door", "OPEN")),
        ),
        step(
            M::POST,
            "/switch_door",
            J(json!({"state": false, "pin_code": "close"})),
            ok("Door switched successfully"),
            Some(("door", "CLOSED")),
        ),
        step(
            M::GET,
            "/switch_door/?pin_code=1234",
            Body::None,
            ok("Door switched successfully"),
            Some(("door", "OPEN")),
        ),
        step(
            M::GET,
            "/switch_door",
            Body::None,
            ok("Door switched successfully"),
            Some(("door", "CLOSED")),
        ),
        step(
            M::POST,
            "/switch_mode/",
            J(json!({"mode_name": "Smart Mode"})),
            ok("Mode switched successfully"),
            Some(("mode", "smart")),
        ),
        step(
            M::POST,
            "/switch_mode",
            J(json!({"mode_name": "Assisted Mode"})),
            ok("Mode switched successfully"),
            Some(("mode", "assisted")),
        ),
        step(
            M::GET,
            "/switch_mode/",
            Body::None,
            ok("Mode switched successfully"),
            Some(("mode", "user")),
        ),
        step(
            M::GET,
            "/switch_mode",
            Body::None,
            ok("Mode switched successfully"),
            Some(("mode", "smart")),
        ),
        step(
            M::POST,
            "/switch_tv_channel/",
            J(json!({"channel": "3", "name": "spacetoon"})),
            ok("TV channel switched successfully"),
            Some(("tv", r#"{"channel":3,"name":"spacetoon"}"#)),
        ),
        step(
            M::POST,
            "/switch_tv_channel",
            J(json!({"channel": 5, "name": "Cartoon Network"})),
            ok("TV channel switched successfully"),
            Some(("tv", r#"{"channel":5,"name":"Cartoon Network"}"#)),
        ),
        step(
            M::GET,
            "/switch_tv_channel/",
            Body::None,
            ok("TV channel switched successfully"),
            Some(("tv", r#"{"channel":6,"name":"JEEM"}"#)),
        ),
        step(
            M::GET,
            "/switch_tv_channel",
            Body::None,
            ok("TV channel switched successfully"),
            Some(("tv", r#"{"channel":0,"name":""}"#)),
        ),
        step(
            M::POST,
            "/switch_fan_level/",
            J(json!({"fanLevel": 2})),
            ok("Fan level switched successfully"),
            Some(("fan", "2")),
        ),
        step(
            M::POST,
            "/switch_fan_level",
            J(json!({"fanLevel": "3"})),
            ok("Fan level switched successfully"),
            Some(("fan", "3")),
        ),
        step(
            M::GET,
            "/switch_fan_level/",
            Body::None,
            ok("Fan level switched successfully"),
            Some(("fan", "0")),
        ),
        step(
            M::GET,
            "/switch_fan_level",
            Body::None,
            ok("Fan level switched successfully"),
            Some(("fan", "1")),
        ),
        step(
            M::GET,
            "/set_temperature/23.5/61",
            Body::None,
            Expect::Text("Data inserted successfully!"),
            Some(("climate", r#"{"humidity":61.0,"temperature":23.5}"#)),
        ),
        step(
            M::POST,
            "/set_temperature/24/50.5/",
            Body::None,
            Expect::Text("Data inserted successfully!"),
            Some(("climate", r#"{"humidity":50.5,"temperature":24.0}"#)),
        ),
        step(
            M::GET,
            "/get_light_state/",
            Body::None,
            Expect::Json(json!(false)),
            None,
        ),
        step(
            M::GET,
            "/get_light_state",
            Body::None,
            Expect::Json(json!(false)),
            None,
        ),
        step(
            M::GET,
            "/get_door_state/",
            Body::None,
            Expect::Json(json!(false)),
            None,
        ),
        step(
            M::GET,
            "/get_door_state",
            Body::None,
            Expect::Json(json!(false)),
            None,
        ),
        step(
            M::GET,
            "/get_tv_state/",
            Body::None,
            Expect::Json(json!(0)),
            None,
        ),
        step(
            M::GET,
            "/get_tv_state",
            Body::None,
            Expect::Json(json!(0)),
            None,
        ),
        step(
            M::GET,
            "/get_tv_state_name/",
            Body::None,
            Expect::Text(""),
            None,
        ),
        step(
            M::GET,
            "/get_tv_state_name",
            Body::None,
            Expect::Text(""),
            None,
        ),
        step(
            M::GET,
            "/get_fan_level/",
            Body::None,
            Expect::Json(json!(1)),
            None,
        ),
        step(
            M::GET,
            "/get_fan_level",
            Body::None,
            Expect::Json(json!(1)),
            None,
        ),
        step(
            M::GET,
            "/get_temperature/",
            Body::None,
            Expect::Json(json!({"temp": 24.0, "humidity": 50.5})),
            None,
        ),
        step(
            M::GET,
            "/get_temperature",
            Body::None,
            Expect::Json(json!({"temp": 24.0, "humidity": 50.5})),
            None,
        ),
        step(
            M::GET,
            "/get_mode_state/",
            Body::None,
            Expect::Json(json!({"name": "Smart Mode"})),
            None,
        ),
        step(
            M::GET,
            "/get_mode_state",
            Body::None,
            Expect::Json(json!({"name": "Smart Mode"})),
            None,
        ),
        step(
            M::GET,
            "/insert/25.5/Yes/300.0/True/",
            Body::None,
            Expect::Text("Data inserted successfully!"),
            None,
        ),
        step(
            M::POST,
            "/insert/25.5/no/0/0",
            Body::None,
            Expect::Text("Data inserted successfully!"),
            None,
        ),
        step(
            M::GET,
            "/insert_tv/true/3/",
            Body::None,
            Expect::Text("Data TV inserted successfully!"),
            None,
        ),
        step(
            M::POST,
            "/insert_tv/False/0",
            Body::None,
            Expect::Text("Data TV inserted successfully!"),
            None,
        ),
        step(
            M::GET,
            "/insert_wether/24/55/1/2/",
            Body::None,
            Expect::Text("Data wether inserted successfully!"),
            None,
        ),
        step(
            M::POST,
            "/insert_wether/24.5/55.5/No/6",
            Body::None,
            Expect::Text("Data wether inserted successfully!"),
            None,
        ),
    ];
    for s in &steps {
        let what = format!("{} {}", s.method, s.path);
        let resp = call(&client, &hub, s.method.clone(), s.path, &s.body).await;
        check(resp, s.status, &s.expect, &what).await;
        if let Some((thing, payload)) = s.state {
            expect_state(&mut sub, &format!("smarthub/{thing}/state"), payload).await;
        }
    }
    for kind in ReadingKind::ALL {
        hub.wait_count(kind, 2).await;
    }
    let conn = smarthub::store::open_reader(&hub.db_path()).unwrap();
    let (node, source, motion, active): (String, String, bool, bool) = conn
        .query_row(
            "SELECT node_id, source, motion, active FROM light_readings ORDER BY id LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap();
    assert_eq!(
        (node.as_str(), source.as_str(), motion, active),
        ("http", "http", true, true)
    );
    let fan6: i64 = conn
        .query_row(
            "SELECT fan_level FROM climate_readings ORDER BY id DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(fan6, 6, "old data's fan level 6 is accepted in readings");

    // No weather provider configured: 503 JSON.
    let resp = call(&client, &hub, M::GET, "/get_weather_json/", &Body::None).await;
    assert_eq!(resp.status().as_u16(), 503);
    assert_eq!(resp.json::<Value>().await.unwrap()["status"], "error");

    // And the other way: each MQTT /set is seen through the REST getters.
    let cmd = hub.mqtt("mqtt-commander").await;
    let cases: Vec<(&str, &str, &str, Expect)> = vec![
        (
            "smarthub/light/set",
            "ON",
            "/get_light_state/",
            Expect::Json(json!(true)),
        ),
        (
            "smarthub/door/set",
            r#"{"state": "OPEN", "pin_code": "1234"}"#,
            "/get_door_state",
            Expect::Json(json!(true)),
        ),
        (
            "smarthub/tv/set",
            "4",
            "/get_tv_state/",
            Expect::Json(json!(4)),
        ),
        (
            "smarthub/tv/set",
            "4",
            "/get_tv_state_name/",
            Expect::Text("boomerang"),
        ),
        (
            "smarthub/fan/set",
            "2",
            "/get_fan_level",
            Expect::Json(json!(2)),
        ),
        (
            "smarthub/mode/set",
            "assisted",
            "/get_mode_state/",
            Expect::Json(json!({"name": "Assisted Mode"})),
        ),
    ];
    for (topic, payload, path, expect) in &cases {
        cmd.publish(topic, *payload).await;
        let thing = topic.split('/').nth(1).unwrap();
        let state_topic = format!("smarthub/{thing}/state");
        // The state topic shows the change once the engine applied it.
        let _ = sub.next_on(&state_topic).await;
        let resp = call(&client, &hub, M::GET, path, &Body::None).await;
        check(
            resp,
            200,
            expect,
            &format!("{topic} {payload} → GET {path}"),
        )
        .await;
    }
    cmd.disconnect().await;
    sub.disconnect().await;
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_reason_and_changes_nothing() {
    let mut hub = TestHub::start().await;
    let client = reqwest::Client::new();
    let before: Value = client
        .get(hub.url("/api/v1/state"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let raw =
        |s: &'static str| Body::Json(serde_json::from_str(s).unwrap_or(Value::String(s.into())));
    let cases: Vec<(Method, &str, Body, u16, &str)> = vec![
        (Method::POST, "/switch_light/", Body::None, 400, "body"),
        (
            Method::POST,
            "/switch_light/",
            raw(r#"{"isss": true}"#),
            400,
            "iss: missing",
        ),
        (
            Method::POST,
            "/switch_light/",
            raw(r#"{"iss": "maybe"}"#),
            400,
            "iss",
        ),
        (
            Method::POST,
            "/switch_fan_level/",
            raw(r#"{"fanLevel": "high"}"#),
            400,
            "fanLevel",
        ),
        (
            Method::POST,
            "/switch_fan_level/",
            raw(r#"{"fanLevel": 4}"#),
            400,
            "fanLevel",
        ),
        (
            Method::POST,
            "/switch_fan_level",
            raw(r#"{"fanLevel": "nan"}"#),
            400,
            "fanLevel",
        ),
        (
            Method::POST,
            "/switch_fan_level",
            raw(r#"{"fanLevel": 1.5}"#),
            400,
            "fanLevel",
        ),
        (
            Method::POST,
            "/switch_tv_channel/",
            raw(r#"{"channel": -1}"#),
            400,
            "channel",
        ),
        (
            Method::POST,
            "/switch_tv_channel/",
            raw(r#"{"channel": "abc"}"#),
            400,
            "channel",
        ),
        (
            Method::POST,
            "/switch_tv_channel/",
            raw(r#"{"channel": 2, "name": "a channel name far longer than thirty"}"#),
            400,
            "name",
        ),
        (
            Method::POST,
            "/switch_mode/",
            raw(r#"{"mode_name": "Party Mode"}"#),
            400,
            "mode_name",
        ),
        (
            Method::POST,
            "/switch_mode/",
            raw(r#"{}"#),
            400,
            "mode_name: missing",
        ),
        (
            Method::POST,
            "/switch_door/",
            raw(r#"{"state": true}"#),
            400,
            "pin_code",
        ),
        (
            Method::GET,
            "/set_temperature/nan/50/",
            Body::None,
            400,
            "temperature",
        ),
        (
            Method::GET,
            "/set_temperature/inf/50/",
            Body::None,
            400,
            "temperature",
        ),
        (
            Method::GET,
            "/set_temperature/hot/50/",
            Body::None,
            400,
            "temperature",
        ),
        (
            Method::GET,
            "/set_temperature/20/150/",
            Body::None,
            400,
            "humidity",
        ),
        (
            Method::GET,
            "/insert/hot/Yes/300/True/",
            Body::None,
            400,
            "temperature",
        ),
        (
            Method::GET,
            "/insert/nan/Yes/300/True/",
            Body::None,
            400,
            "temperature",
        ),
        (
            Method::GET,
            "/insert/20/maybe/300/True/",
            Body::None,
            400,
            "motion",
        ),
        (
            Method::GET,
            "/insert/20/Yes/-5/True/",
            Body::None,
            400,
            "light_intensity",
        ),
        (
            Method::GET,
            "/insert/20/Yes/inf/True/",
            Body::None,
            400,
            "light_intensity",
        ),
        (
            Method::GET,
            "/insert_tv/1/-1/",
            Body::None,
            400,
            "channelOn",
        ),
        (
            Method::GET,
            "/insert_tv/1/three/",
            Body::None,
            400,
            "channelOn",
        ),
        (
            Method::GET,
            "/insert_wether/20/50/1/11/",
            Body::None,
            400,
            "fanLevel",
        ),
        (
            Method::GET,
            "/insert_wether/20/-3/1/1/",
            Body::None,
            400,
            "humidity",
        ),
        (Method::DELETE, "/switch_light/", Body::None, 405, "method"),
        (Method::PUT, "/get_light_state", Body::None, 405, "method"),
        (
            Method::POST,
            "/api/v1/fan",
            raw(r#"{"level": 9}"#),
            400,
            "level",
        ),
        (
            Method::POST,
            "/api/v1/light",
            raw(r#"{"state": "DIM"}"#),
            400,
            "state",
        ),
        (
            Method::POST,
            "/api/v1/light",
            raw(r#"{"stat": "ON"}"#),
            400,
            "stat",
        ),
        (
            Method::POST,
            "/api/v1/tv",
            raw(r#"{"channel": -3}"#),
            400,
            "channel",
        ),
        (
            Method::POST,
            "/api/v1/mode",
            raw(r#"{"mode": "party"}"#),
            400,
            "mode",
        ),
        (
            Method::GET,
            "/api/v1/readings/tv?since=yesterday",
            Body::None,
            400,
            "since",
        ),
        (
            Method::GET,
            "/api/v1/readings/oven",
            Body::None,
            404,
            "kind",
        ),
    ];
    for (method, path, body, status, needle) in &cases {
        let mut req = client.request(method.clone(), hub.url(path));
        match body {
            Body::Json(Value::String(s)) => {
                req = req
                    .header("content-type", "application/json")
                    .body(s.clone())
            }
            Body::Json(v) => req = req.json(v),
            Body::None => {}
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), *status, "{method} {path}");
        let body: Value = resp
            .json()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: not JSON: {e}"));
        assert_eq!(body["status"], "error", "{method} {path}");
        let message = body["message"].as_str().unwrap();
        assert!(message.contains(needle), "{method} {path}: {message}");
    }
    // A malformed JSON body.
    let resp = client
        .post(hub.url("/switch_light/"))
        .header("content-type", "application/json")
        .body("{iss: tru")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    assert!(resp.text().await.unwrap().contains("malformed JSON"));

    // Wrong PIN: 403 with the legacy body; after 5, locked out: 429 even with the right PIN.
    for _ in 0..5 {
        let resp = client
            .post(hub.url("/switch_door/"))
            .json(&json!({"state": true, "pin_code": "0000"}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 403);
        assert_eq!(
            resp.json::<Value>().await.unwrap(),
            json!({"status": "error", "message": "PINCODE INVALID"})
        );
    }
    let resp = client
        .post(hub.url("/switch_door/"))
        .json(&json!({"state": true, "pin_code": "1234"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 429);
    let resp = client
        .get(hub.url("/switch_door/?pin_code=1234"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 429);

    let after: Value = client
        .get(hub.url("/api/v1/state"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(before, after, "nothing changed");
    for kind in ReadingKind::ALL {
        assert_eq!(hub.count(kind), 0);
    }
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_v1_state_commands_readings_nodes_and_openapi() {
    let mut hub = TestHub::start().await;
    let client = reqwest::Client::new();
    let post = |path: &str, body: Value| client.post(hub.url(path)).json(&body).send();
    let state: Value = post("/api/v1/light", json!({"state": "ON"}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(state["light"], true);
    let state: Value = post("/api/v1/tv", json!({"channel": 2}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(state["tv"], json!({"channel": 2, "name": "nickelodeon"}));
    let state: Value = post("/api/v1/fan", json!({"level": 3}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(state["fan_level"], 3);
    let state: Value = post("/api/v1/mode", json!({"mode": "assisted"}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(state["mode"], "assisted");
    let resp = post("/api/v1/door", json!({"state": "OPEN", "pin_code": "9999"}))
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403);
    let state: Value = post("/api/v1/door", json!({"state": "OPEN", "pin_code": "1234"}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(state["door_open"], true);
    let got: Value = client
        .get(hub.url("/api/v1/state"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got, state);

    let node = hub.mqtt("pager").await;
    for i in 0..5 {
        node.publish(
            "smarthub/nodes/pager-1/tv",
            format!(r#"{{"motion": true, "channel": {i}}}"#),
        )
        .await;
    }
    node.publish("smarthub/nodes/pager-1/light", "{bad").await;
    hub.wait_count(ReadingKind::Tv, 5).await;
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let mut url = hub.url("/api/v1/readings/tv?limit=2");
        if let Some(a) = after {
            url.push_str(&format!("&after_id={a}"));
        }
        let page: Value = client.get(url).send().await.unwrap().json().await.unwrap();
        for r in page["readings"].as_array().unwrap() {
            seen.push(r["channel"].as_i64().unwrap());
            assert_eq!(r["node_id"], "pager-1");
            assert_eq!(r["motion"], true);
            assert!(r["measured_at"].as_str().unwrap().ends_with('Z'));
        }
        match page["next_after_id"].as_i64() {
            Some(a) => after = Some(a),
            None => break,
        }
    }
    assert_eq!(seen, vec![0, 1, 2, 3, 4]);
    let future: Value = client
        .get(hub.url("/api/v1/readings/tv?since=2999-01-01T00:00:00Z"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(future["readings"], json!([]));

    let nodes = hub.url("/api/v1/nodes");
    eventually_async("node counts", || async {
        let nodes: Value = client
            .get(&nodes)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        nodes[0]["messages"] == 5 && nodes[0]["rejections"] == 1
    })
    .await;
    let nodes: Value = client
        .get(&nodes)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(nodes[0]["node_id"], "pager-1");
    assert_eq!(nodes[0]["kinds"], json!(["tv"]));

    let doc: Value = client
        .get(hub.url("/api/v1/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3."),
        "{}",
        doc["openapi"]
    );
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
    let paths: std::collections::BTreeSet<String> =
        doc["paths"].as_object().unwrap().keys().cloned().collect();
    for p in [
        "/api/v1/state",
        "/api/v1/light",
        "/api/v1/door",
        "/api/v1/tv",
        "/api/v1/fan",
        "/api/v1/mode",
        "/api/v1/readings/{kind}",
        "/api/v1/nodes",
        "/api/v1/nodes/{node_id}",
        "/api/v1/train",
        "/api/v1/stream",
        "/api/v1/openapi.json",
    ] {
        assert!(paths.contains(p), "{p} missing from {paths:?}");
    }
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            assert!(
                op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                "{method} {path}"
            );
        }
    }
    // Every schema reference resolves.
    let text = doc.to_string();
    for reference in text.split("\"$ref\":\"").skip(1) {
        let name = reference
            .split('"')
            .next()
            .unwrap()
            .trim_start_matches("#/components/schemas/");
        assert!(
            doc["components"]["schemas"][name].is_object(),
            "dangling $ref {name}"
        );
    }
    node.disconnect().await;
    hub.stop().await;
}

async fn eventually_async<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_protects_state_changes_only() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret-token-of-24-chars\n").unwrap();
    let mut config = test_config();
    config.http.api_token_file = token_file.display().to_string();
    let mut hub = TestHub::start_in(dir, config).await;
    let client = reqwest::Client::new();
    let resp = client.get(hub.url("/switch_light/")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let resp = client
        .post(hub.url("/api/v1/light"))
        .json(&json!({"state": "ON"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let resp = client
        .post(hub.url("/api/v1/light"))
        .bearer_auth("wrong-token-of-24-chars!")
        .json(&json!({"state": "ON"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    assert!(!hub.hub().engine.state().light);
    // Reads stay open.
    let resp = client
        .get(hub.url("/get_light_state/"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let resp = client
        .post(hub.url("/api/v1/light"))
        .bearer_auth("s3cret-token-of-24-chars")
        .json(&json!({"state": "ON"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert!(hub.hub().engine.state().light);
    hub.stop().await;
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn next_event(ws: &mut Ws, want: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("event in time")
            .expect("stream open")
            .unwrap();
        if let tokio_tungstenite::tungstenite::Message::Text(t) = msg {
            let v: Value = serde_json::from_str(&t).unwrap();
            if want(&v) {
                return v;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_pushes_changes_and_drops_clients_that_never_read() {
    let mut hub = TestHub::start().await;
    let ws_url = format!("ws://{}/api/v1/stream", hub.hub().http_addr);
    let (mut fast, _) = tokio_tungstenite::connect_async(&ws_url).await.unwrap();
    let (slow, _) = tokio_tungstenite::connect_async(&ws_url).await.unwrap();
    let client = reqwest::Client::new();

    let mqtt = hub.mqtt("stream-mqtt").await;
    mqtt.publish("smarthub/light/set", "ON").await;
    let ev = next_event(&mut fast, |v| v["type"] == "state" && v["thing"] == "light").await;
    assert_eq!(
        ev,
        json!({"type": "state", "thing": "light", "payload": "ON", "origin": "mqtt"})
    );
    client
        .post(hub.url("/api/v1/fan"))
        .json(&json!({"level": 2}))
        .send()
        .await
        .unwrap();
    let ev = next_event(&mut fast, |v| v["type"] == "state" && v["thing"] == "fan").await;
    assert_eq!(
        ev,
        json!({"type": "state", "thing": "fan", "payload": "2", "origin": "rest"})
    );

    // Flood readings while `slow` never reads; `fast` reads in a task of its own, and the flood waits
    // for it now and then (a test client in a debug build on 2 shared cores is slow too).
    const N: usize = 30_000;
    let progress = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = progress.clone();
    let reader = tokio::spawn(async move {
        let mut readings = 0;
        while readings < N {
            let v = next_event(&mut fast, |v| v["type"] == "reading").await;
            assert_eq!(v["reading"]["node_id"], "flood");
            readings += 1;
            seen.store(readings, std::sync::atomic::Ordering::SeqCst);
        }
        fast
    });
    for i in 0..N {
        if i % 500 == 0 {
            let progress = progress.clone();
            eventually("the reading client keeps up", || {
                progress.load(std::sync::atomic::Ordering::SeqCst) + 1500 >= i
            })
            .await;
        }
        mqtt.publish(
            "smarthub/nodes/flood/light",
            format!(r#"{{"temperature": 21.5, "motion": true, "light_intensity": {i}.0, "active": false}}"#),
        )
        .await;
    }
    mqtt.wait_acked(N + 1).await;
    hub.wait_count(ReadingKind::Light, N as u64).await;
    let mut fast = reader.await.unwrap();
    // A change after the flood still reaches the client that reads.
    client
        .post(hub.url("/api/v1/fan"))
        .json(&json!({"level": 1}))
        .send()
        .await
        .unwrap();
    let ev = next_event(&mut fast, |v| v["type"] == "state" && v["thing"] == "fan").await;
    assert_eq!(ev["payload"], "1");

    // The client that never read was dropped: its stream ends before it saw every event.
    let mut slow = slow;
    let mut got = 0usize;
    let ended = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match slow.next().await {
                Some(Ok(tokio_tungstenite::tungstenite::Message::Text(_))) => got += 1,
                Some(Ok(tokio_tungstenite::tungstenite::Message::Close(_)))
                | None
                | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the slow client was not disconnected");
    assert!(
        got < N + 3,
        "the slow client got everything ({got}): it was not dropped"
    );
    let _ = fast.close(None).await;
    mqtt.disconnect().await;
    hub.stop().await;
}
