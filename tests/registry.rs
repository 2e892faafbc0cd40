//! `weir registry`: the Confluent Schema Registry REST API over a real Postgres, through
//! HTTP, with Confluent's status codes, error codes and bodies.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::{Method, header};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use weir_tests::{Registry, TestDb, free_port, wait_for_port, weir_bin};

const V1_JSON: &str = "application/vnd.schemaregistry.v1+json";

/// One registry on a schema of its own, and an HTTP client for it.
struct Env {
    api: Api,
    _registry: Registry,
    _db: TestDb,
}

fn start() -> Env {
    let db = TestDb::new();
    let registry = Registry::start(&db.url());
    Env {
        api: Api::new(&registry.url),
        _registry: registry,
        _db: db,
    }
}

struct Api {
    http: reqwest::Client,
    base: String,
}

/// A response: status, content type, body as text and (when it is JSON) parsed.
#[derive(Debug)]
struct Reply {
    status: u16,
    content_type: String,
    text: String,
    body: Value,
}

impl Reply {
    /// Asserts the status and returns the body.
    fn ok(self) -> Value {
        assert_eq!(self.status, 200, "{}", self.text);
        self.body
    }

    /// Asserts an error: its status, its Confluent error code and that it has a message.
    fn error(&self, status: u16, code: i64) -> &str {
        assert_eq!(
            (self.status, self.body["error_code"].as_i64()),
            (status, Some(code)),
            "{}",
            self.text
        );
        let message = self.body["message"].as_str().expect("a message");
        assert!(!message.is_empty());
        assert_eq!(self.content_type, V1_JSON);
        message
    }
}

impl Api {
    fn new(base: &str) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: base.to_string(),
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Option<String>,
    ) -> Reply {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base));
        if let Some(content_type) = content_type {
            request = request.header(header::CONTENT_TYPE, content_type);
        }
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let text = response.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply {
            status,
            content_type,
            text,
            body,
        }
    }

    async fn get(&self, path: &str) -> Reply {
        self.send(Method::GET, path, None, None).await
    }

    async fn delete(&self, path: &str) -> Reply {
        self.send(Method::DELETE, path, None, None).await
    }

    async fn post(&self, path: &str, body: Value) -> Reply {
        self.send(Method::POST, path, Some(V1_JSON), Some(body.to_string()))
            .await
    }

    async fn put(&self, path: &str, body: Value) -> Reply {
        self.send(Method::PUT, path, Some(V1_JSON), Some(body.to_string()))
            .await
    }

    /// `POST /subjects/{subject}/versions`.
    async fn try_register(&self, subject: &str, schema: &str) -> Reply {
        let path = format!("/subjects/{subject}/versions");
        self.post(&path, json!({ "schema": schema })).await
    }

    /// Registers a schema that must be accepted; returns its id.
    async fn register(&self, subject: &str, schema: &str) -> i64 {
        let body = self.try_register(subject, schema).await.ok();
        let id = body["id"].as_i64().expect("an id");
        assert_eq!(body, json!({ "id": id }));
        id
    }

    /// `POST /compatibility/subjects/{subject}/versions/{version}`: `is_compatible`.
    async fn compatible(&self, subject: &str, version: &str, schema: &str) -> bool {
        let path = format!("/compatibility/subjects/{subject}/versions/{version}");
        let body = self.post(&path, json!({ "schema": schema })).await.ok();
        body["is_compatible"].as_bool().expect("is_compatible")
    }

    async fn set_level(&self, subject: &str, level: &str) {
        let body = self
            .put(
                &format!("/config/{subject}"),
                json!({ "compatibility": level }),
            )
            .await
            .ok();
        assert_eq!(body, json!({ "compatibility": level }));
    }

    async fn versions(&self, subject: &str) -> Value {
        self.get(&format!("/subjects/{subject}/versions"))
            .await
            .ok()
    }
}

/// A record `weir.test.Tick` with these fields (JSON objects, comma-separated).
fn tick(fields: &str) -> String {
    format!(r#"{{"type":"record","name":"Tick","namespace":"weir.test","fields":[{fields}]}}"#)
}

const SYMBOL: &str = r#"{"name":"symbol","type":"string"}"#;
const PRICE: &str = r#"{"name":"price","type":"double"}"#;
const PRICE_DEFAULT: &str = r#"{"name":"price","type":"double","default":0.0}"#;

fn fields(list: &[&str]) -> String {
    tick(&list.join(","))
}

const LEVELS: [&str; 7] = [
    "NONE",
    "BACKWARD",
    "BACKWARD_TRANSITIVE",
    "FORWARD",
    "FORWARD_TRANSITIVE",
    "FULL",
    "FULL_TRANSITIVE",
];

#[tokio::test]
async fn root_types_contexts_and_unknown_routes() {
    let env = start();
    let api = &env.api;
    let root = api.get("/").await;
    assert_eq!(root.content_type, V1_JSON);
    assert_eq!(root.ok(), json!({}));
    assert_eq!(api.get("/schemas/types").await.ok(), json!(["AVRO"]));
    assert_eq!(api.get("/contexts").await.ok(), json!(["."]));
    assert_eq!(api.get("/subjects").await.ok(), json!([]));
    api.get("/no/such/route").await.error(404, 404);
    api.send(Method::PATCH, "/subjects", None, None)
        .await
        .error(405, 405);
}

#[tokio::test]
async fn register_and_read_back() {
    let env = start();
    let api = &env.api;
    let v1 = fields(&[SYMBOL]);
    let id = api.register("ticks-value", &v1).await;
    assert_eq!(api.get("/subjects").await.ok(), json!(["ticks-value"]));
    assert_eq!(api.versions("ticks-value").await, json!([1]));
    let expected = json!({"subject": "ticks-value", "version": 1, "id": id, "schema": v1});
    for version in ["1", "latest", "-1"] {
        let reply = api
            .get(&format!("/subjects/ticks-value/versions/{version}"))
            .await;
        assert_eq!(reply.content_type, V1_JSON);
        // Field for field, and no `schemaType` for Avro, as Confluent.
        assert_eq!(reply.ok(), expected, "version {version}");
    }
    let raw = api.get("/subjects/ticks-value/versions/1/schema").await;
    assert_eq!((raw.status, raw.text.as_str()), (200, v1.as_str()));
    assert_eq!(
        api.get(&format!("/schemas/ids/{id}")).await.ok(),
        json!({ "schema": v1 })
    );
    let raw = api.get(&format!("/schemas/ids/{id}/schema")).await;
    assert_eq!((raw.status, raw.text.as_str()), (200, v1.as_str()));
    assert_eq!(
        api.get(&format!("/schemas/ids/{id}/subjects")).await.ok(),
        json!(["ticks-value"])
    );
    assert_eq!(
        api.get(&format!("/schemas/ids/{id}/versions")).await.ok(),
        json!([{"subject": "ticks-value", "version": 1}])
    );
    assert_eq!(
        api.get("/subjects/ticks-value/versions/1/referencedby")
            .await
            .ok(),
        json!([])
    );

    let v2 = fields(&[SYMBOL, PRICE_DEFAULT]);
    let id2 = api.register("ticks-value", &v2).await;
    assert_ne!(id, id2);
    assert_eq!(api.versions("ticks-value").await, json!([1, 2]));
    let latest = api.get("/subjects/ticks-value/versions/latest").await.ok();
    assert_eq!(
        (latest["version"].as_i64(), latest["id"].as_i64()),
        (Some(2), Some(id2))
    );
    let all = api.get("/schemas").await.ok();
    assert_eq!(all.as_array().unwrap().len(), 2);
    assert_eq!(
        api.get("/schemas?latestOnly=true").await.ok(),
        json!([{"subject": "ticks-value", "version": 2, "id": id2, "schema": v2}])
    );
    assert_eq!(
        api.get("/subjects?subjectPrefix=ticks").await.ok(),
        json!(["ticks-value"])
    );
    assert_eq!(api.get("/subjects?subjectPrefix=zzz").await.ok(), json!([]));
}

#[tokio::test]
async fn same_schema_gets_the_same_id_and_no_new_version() {
    let env = start();
    let api = &env.api;
    let compact = fields(&[SYMBOL, PRICE_DEFAULT]);
    // The same schema: other whitespace, other attribute order, `{"type": "string"}`.
    let spaced = r#"{
        "namespace": "weir.test", "type": "record",
        "fields": [
            { "type": { "type": "string" }, "name": "symbol" },
            { "default": 0.0, "type": "double", "name": "price" }
        ],
        "name": "Tick"
    }"#;
    let id = api.register("a-value", &compact).await;
    assert_eq!(api.register("a-value", spaced).await, id);
    assert_eq!(api.register("a-value", &compact).await, id);
    assert_eq!(api.versions("a-value").await, json!([1]));
    // The same schema under another subject keeps its id.
    assert_eq!(api.register("b-value", spaced).await, id);
    assert_eq!(api.versions("b-value").await, json!([1]));
    // The text is the one first registered.
    assert_eq!(
        api.get(&format!("/schemas/ids/{id}")).await.ok(),
        json!({ "schema": compact })
    );
    let b = api.get("/subjects/b-value/versions/1").await.ok();
    assert_eq!(b["schema"], json!(compact));
    assert_eq!(
        api.get(&format!("/schemas/ids/{id}/subjects")).await.ok(),
        json!(["a-value", "b-value"])
    );

    // Docs, defaults, aliases and logical types make another schema.
    let variants = [
        fields(&[SYMBOL, r#"{"name":"price","type":"double","default":1.0}"#]),
        fields(&[
            SYMBOL,
            r#"{"name":"price","type":"double","default":0.0,"doc":"last"}"#,
        ]),
        fields(&[
            SYMBOL,
            r#"{"name":"price","type":"double","default":0.0,"aliases":["p"]}"#,
        ]),
        fields(&[
            r#"{"name":"symbol","type":{"type":"string","logicalType":"uuid"}}"#,
            PRICE_DEFAULT,
        ]),
    ];
    let mut ids = vec![id];
    for variant in &variants {
        let new = api.register("a-value", variant).await;
        assert!(!ids.contains(&new), "{variant} got an existing id");
        ids.push(new);
    }
    assert_eq!(api.versions("a-value").await, json!([1, 2, 3, 4, 5]));
}

#[tokio::test]
async fn lookup_by_content() {
    let env = start();
    let api = &env.api;
    let v1 = fields(&[SYMBOL, PRICE_DEFAULT]);
    let id = api.register("l-value", &v1).await;
    let reordered = r#"{"fields":[{"name":"symbol","type":{"type":"string"}},
        {"default":0.0,"name":"price","type":"double"}],"name":"Tick","namespace":"weir.test",
        "type":"record"}"#;
    assert_eq!(
        api.post("/subjects/l-value", json!({ "schema": reordered }))
            .await
            .ok(),
        json!({"subject": "l-value", "version": 1, "id": id, "schema": v1})
    );
    let other = fields(&[SYMBOL]);
    api.post("/subjects/l-value", json!({ "schema": other }))
        .await
        .error(404, 40403);
    api.post("/subjects/nobody", json!({ "schema": v1 }))
        .await
        .error(404, 40401);
    api.post("/subjects/l-value", json!({ "schema": "{\"type\":" }))
        .await
        .error(422, 42201);
    // A soft-deleted version is found only when asked for.
    api.delete("/subjects/l-value/versions/1").await.ok();
    api.post("/subjects/l-value", json!({ "schema": v1 }))
        .await
        .error(404, 40401);
    let found = api
        .post("/subjects/l-value?deleted=true", json!({ "schema": v1 }))
        .await
        .ok();
    assert_eq!(found["id"].as_i64(), Some(id));
}

/// One schema change, and the levels that accept it.
struct Change {
    name: &'static str,
    old: String,
    new: String,
    accepted_by: &'static [&'static str],
}

fn changes() -> Vec<Change> {
    let one = |name: &str, t: &str| fields(&[&format!(r#"{{"name":"{name}","type":{t}}}"#)]);
    let backward: &'static [&'static str] = &["NONE", "BACKWARD", "BACKWARD_TRANSITIVE"];
    let forward: &'static [&'static str] = &["NONE", "FORWARD", "FORWARD_TRANSITIVE"];
    vec![
        Change {
            name: "added-with-default",
            old: fields(&[SYMBOL]),
            new: fields(&[SYMBOL, PRICE_DEFAULT]),
            accepted_by: &LEVELS,
        },
        Change {
            name: "added-without-default",
            old: fields(&[SYMBOL]),
            new: fields(&[SYMBOL, PRICE]),
            accepted_by: forward,
        },
        Change {
            name: "removed",
            old: fields(&[SYMBOL, PRICE]),
            new: fields(&[SYMBOL]),
            accepted_by: backward,
        },
        Change {
            name: "removed-with-default",
            old: fields(&[SYMBOL, PRICE_DEFAULT]),
            new: fields(&[SYMBOL]),
            accepted_by: &LEVELS,
        },
        Change {
            name: "int-to-long",
            old: one("n", r#""int""#),
            new: one("n", r#""long""#),
            accepted_by: backward,
        },
        Change {
            name: "long-to-int",
            old: one("n", r#""long""#),
            new: one("n", r#""int""#),
            accepted_by: forward,
        },
        Change {
            name: "float-to-double",
            old: one("n", r#""float""#),
            new: one("n", r#""double""#),
            accepted_by: backward,
        },
        Change {
            name: "string-to-bytes",
            old: one("s", r#""string""#),
            new: one("s", r#""bytes""#),
            accepted_by: &LEVELS,
        },
        Change {
            name: "int-to-string",
            old: one("n", r#""int""#),
            new: one("n", r#""string""#),
            accepted_by: &["NONE"],
        },
        Change {
            name: "enum-symbol-added",
            old: one(
                "side",
                r#"{"type":"enum","name":"Side","symbols":["BUY","SELL"]}"#,
            ),
            new: one(
                "side",
                r#"{"type":"enum","name":"Side","symbols":["BUY","SELL","HOLD"]}"#,
            ),
            accepted_by: backward,
        },
        Change {
            name: "enum-symbol-added-old-default",
            old: one(
                "side",
                r#"{"type":"enum","name":"Side","symbols":["BUY","SELL"],"default":"BUY"}"#,
            ),
            new: one(
                "side",
                r#"{"type":"enum","name":"Side","symbols":["BUY","SELL","HOLD"],"default":"BUY"}"#,
            ),
            accepted_by: &LEVELS,
        },
        Change {
            name: "union-branch-added",
            old: one("note", r#"["null","string"]"#),
            new: one("note", r#"["null","string","long"]"#),
            accepted_by: backward,
        },
        Change {
            name: "made-optional",
            old: one("note", r#""string""#),
            new: one("note", r#"["null","string"]"#),
            accepted_by: backward,
        },
        Change {
            name: "record-renamed",
            old: fields(&[SYMBOL]),
            new: fields(&[SYMBOL]).replace(r#""name":"Tick""#, r#""name":"Quote""#),
            accepted_by: &["NONE"],
        },
    ]
}

#[tokio::test]
async fn compatibility_decisions_under_each_level() {
    let env = start();
    let api = &env.api;
    for change in changes() {
        for level in LEVELS {
            let subject = format!("{}-{}", change.name, level.to_lowercase());
            let accepted = change.accepted_by.contains(&level);
            api.set_level(&subject, level).await;
            api.register(&subject, &change.old).await;
            assert_eq!(
                api.compatible(&subject, "latest", &change.new).await,
                accepted,
                "{} under {level}: compatibility check",
                change.name
            );
            let reply = api.try_register(&subject, &change.new).await;
            if accepted {
                assert_eq!(
                    reply.status, 200,
                    "{} under {level}: {}",
                    change.name, reply.text
                );
                assert_eq!(api.versions(&subject).await, json!([1, 2]));
            } else {
                let message = reply.error(409, 409);
                let start = format!(
                    "Schema being registered is incompatible with an earlier schema for subject \"{subject}\", details: [{{errorType:'"
                );
                assert!(message.starts_with(&start), "{message}");
                assert!(
                    message.contains(&format!("compatibility: '{level}'")),
                    "{message}"
                );
                assert_eq!(api.versions(&subject).await, json!([1]));
            }
        }
    }
    // The message names the problem.
    let reply = api
        .try_register("added-without-default-full", &fields(&[SYMBOL, PRICE]))
        .await;
    let message = reply.error(409, 409);
    assert!(
        message.contains(
            "{errorType:'READER_FIELD_MISSING_DEFAULT_VALUE', description:'The field 'price' at path '/fields/1' in the new schema has no default value and is missing in the old schema', additionalInfo:'price'}"
        ),
        "{message}"
    );
    assert!(message.contains("{oldSchemaVersion: 1}"), "{message}");
}

#[tokio::test]
async fn transitive_levels_check_every_live_version() {
    let env = start();
    let api = &env.api;
    // v3 reads v2 (which has price) but not v1 (which has not, and v3 has no default).
    let backward = [
        fields(&[SYMBOL]),
        fields(&[SYMBOL, PRICE_DEFAULT]),
        fields(&[SYMBOL, PRICE]),
    ];
    // v1 reads v2 (price is there) but not v3 (price is gone and v1 has no default).
    let forward = [
        fields(&[SYMBOL, PRICE]),
        fields(&[SYMBOL, PRICE_DEFAULT]),
        fields(&[SYMBOL]),
    ];
    for (level, [v1, v2, v3]) in [
        ("BACKWARD", &backward),
        ("FORWARD", &forward),
        ("FULL", &backward),
    ] {
        let latest_only = format!("{}-latest", level.to_lowercase());
        let transitive = format!("{}-transitive", level.to_lowercase());
        api.set_level(&latest_only, level).await;
        api.set_level(&transitive, &format!("{level}_TRANSITIVE"))
            .await;
        for subject in [&latest_only, &transitive] {
            api.register(subject, v1).await;
            api.register(subject, v2).await;
        }
        api.register(&latest_only, v3).await;
        let message = api
            .try_register(&transitive, v3)
            .await
            .error(409, 409)
            .to_string();
        assert!(message.contains("{oldSchemaVersion: 1}"), "{message}");
        // The compatibility endpoint with a version checks that version only.
        assert!(!api.compatible(&transitive, "1", v3).await, "{level}");
        assert!(api.compatible(&transitive, "2", v3).await, "{level}");
        assert!(api.compatible(&transitive, "latest", v3).await, "{level}");
        let all = api
            .post(
                &format!("/compatibility/subjects/{transitive}/versions"),
                json!({ "schema": v3 }),
            )
            .await
            .ok();
        assert_eq!(all, json!({"is_compatible": false}), "{level}");
        // Soft-deleted versions are not checked.
        api.delete(&format!("/subjects/{transitive}/versions/1"))
            .await
            .ok();
        api.register(&transitive, v3).await;
        assert_eq!(api.versions(&transitive).await, json!([2, 3]));
    }
}

#[tokio::test]
async fn compatibility_endpoint_details() {
    let env = start();
    let api = &env.api;
    let v1 = fields(&[SYMBOL]);
    api.register("c-value", &v1).await;
    let breaking = fields(&[SYMBOL, PRICE]);
    let fine = fields(&[SYMBOL, PRICE_DEFAULT]);
    let path = "/compatibility/subjects/c-value/versions/latest";
    let verbose = api
        .post(
            &format!("{path}?verbose=true"),
            json!({ "schema": breaking }),
        )
        .await
        .ok();
    assert_eq!(verbose["is_compatible"], json!(false));
    let messages: Vec<&str> = verbose["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    assert!(
        messages[0].starts_with("{errorType:'READER_FIELD_MISSING_DEFAULT_VALUE'"),
        "{messages:?}"
    );
    assert!(messages.contains(&"{oldSchemaVersion: 1}"), "{messages:?}");
    assert!(
        messages.contains(&"{validateFields: 'false', compatibility: 'BACKWARD'}"),
        "{messages:?}"
    );
    // Python clients send `True`.
    assert_eq!(
        api.post(&format!("{path}?verbose=True"), json!({ "schema": fine }))
            .await
            .ok(),
        json!({"is_compatible": true, "messages": []})
    );
    assert_eq!(
        api.post(path, json!({ "schema": fine })).await.ok(),
        json!({"is_compatible": true})
    );
    // Nothing registered yet: anything is compatible with "latest".
    assert!(api.compatible("nobody", "latest", &breaking).await);
    api.post(
        "/compatibility/subjects/c-value/versions/3",
        json!({ "schema": fine }),
    )
    .await
    .error(404, 40402);
    for bad in ["abc", "0", "-2"] {
        api.post(
            &format!("/compatibility/subjects/c-value/versions/{bad}"),
            json!({ "schema": fine }),
        )
        .await
        .error(422, 42202);
    }
    api.post(path, json!({ "schema": "{\"type\": \"recrod\"}" }))
        .await
        .error(422, 42201);
    let invalid = api
        .post(
            &format!("{path}?verbose=true"),
            json!({ "schema": "{\"type\": \"recrod\"}" }),
        )
        .await
        .ok();
    assert_eq!(invalid["is_compatible"], json!(false));
    assert!(
        invalid["messages"][0]
            .as_str()
            .unwrap()
            .contains("Invalid schema"),
        "{invalid}"
    );
}

#[tokio::test]
async fn soft_and_permanent_deletes() {
    let env = start();
    let api = &env.api;
    let v1 = fields(&[SYMBOL]);
    let v2 = fields(&[SYMBOL, PRICE_DEFAULT]);
    let v3 = fields(&[
        SYMBOL,
        PRICE_DEFAULT,
        r#"{"name":"volume","type":"long","default":0}"#,
    ]);
    let id1 = api.register("d-value", &v1).await;
    let id2 = api.register("d-value", &v2).await;
    let id3 = api.register("d-value", &v3).await;

    // Versions: permanent only after soft.
    api.delete("/subjects/d-value/versions/2?permanent=true")
        .await
        .error(404, 40407);
    assert_eq!(
        api.delete("/subjects/d-value/versions/2").await.ok(),
        json!(2)
    );
    api.delete("/subjects/d-value/versions/2")
        .await
        .error(404, 40406);
    assert_eq!(api.versions("d-value").await, json!([1, 3]));
    assert_eq!(
        api.get("/subjects/d-value/versions?deleted=true")
            .await
            .ok(),
        json!([1, 2, 3])
    );
    assert_eq!(
        api.get("/subjects/d-value/versions?deletedOnly=true")
            .await
            .ok(),
        json!([2])
    );
    api.get("/subjects/d-value/versions/2")
        .await
        .error(404, 40402);
    let deleted = api
        .get("/subjects/d-value/versions/2?deleted=true")
        .await
        .ok();
    assert_eq!(deleted["id"].as_i64(), Some(id2));
    // A soft-deleted schema can still be read by id: old messages still decode.
    assert_eq!(
        api.get(&format!("/schemas/ids/{id2}")).await.ok(),
        json!({ "schema": v2 })
    );
    assert_eq!(
        api.get(&format!("/schemas/ids/{id2}/versions")).await.ok(),
        json!([])
    );
    assert_eq!(
        api.get(&format!("/schemas/ids/{id2}/versions?deleted=true"))
            .await
            .ok(),
        json!([{"subject": "d-value", "version": 2}])
    );
    assert_eq!(
        api.delete("/subjects/d-value/versions/2?permanent=true")
            .await
            .ok(),
        json!(2)
    );
    assert_eq!(
        api.get("/subjects/d-value/versions?deleted=true")
            .await
            .ok(),
        json!([1, 3])
    );
    api.get(&format!("/schemas/ids/{id2}"))
        .await
        .error(404, 40403);
    api.delete("/subjects/d-value/versions/9")
        .await
        .error(404, 40402);
    api.delete("/subjects/nobody/versions/1")
        .await
        .error(404, 40401);
    api.delete("/subjects/d-value/versions/zero")
        .await
        .error(422, 42202);

    // Subjects: permanent only after soft.
    api.delete("/subjects/d-value?permanent=true")
        .await
        .error(404, 40405);
    assert_eq!(api.delete("/subjects/d-value").await.ok(), json!([1, 3]));
    api.delete("/subjects/d-value").await.error(404, 40404);
    assert_eq!(api.get("/subjects").await.ok(), json!([]));
    assert_eq!(
        api.get("/subjects?deleted=true").await.ok(),
        json!(["d-value"])
    );
    api.get("/subjects/d-value/versions")
        .await
        .error(404, 40401);
    api.get("/subjects/d-value/versions/latest")
        .await
        .error(404, 40401);
    assert_eq!(
        api.get(&format!("/schemas/ids/{id1}")).await.ok(),
        json!({ "schema": v1 })
    );

    // Ids are stable: re-registering brings back the same ids, under new versions.
    assert_eq!(api.register("d-value", &v1).await, id1);
    assert_eq!(api.register("d-value", &v2).await, id2);
    assert_eq!(api.versions("d-value").await, json!([4, 5]));
    assert_eq!(api.delete("/subjects/d-value").await.ok(), json!([4, 5]));
    assert_eq!(
        api.delete("/subjects/d-value?permanent=true").await.ok(),
        json!([1, 3, 4, 5])
    );
    assert_eq!(api.get("/subjects?deleted=true").await.ok(), json!([]));
    api.delete("/subjects/d-value").await.error(404, 40401);
    api.get(&format!("/schemas/ids/{id3}"))
        .await
        .error(404, 40403);
    // After a permanent delete the subject starts again at version 1, with the old id.
    assert_eq!(api.register("d-value", &v3).await, id3);
    assert_eq!(api.versions("d-value").await, json!([1]));
}

#[tokio::test]
async fn config_endpoints() {
    let env = start();
    let api = &env.api;
    assert_eq!(
        api.get("/config").await.ok(),
        json!({"compatibilityLevel": "BACKWARD"})
    );
    for level in LEVELS {
        assert_eq!(
            api.put("/config", json!({ "compatibility": level }))
                .await
                .ok(),
            json!({ "compatibility": level })
        );
        assert_eq!(
            api.get("/config").await.ok(),
            json!({ "compatibilityLevel": level })
        );
    }
    assert_eq!(
        api.put("/config", json!({"compatibility": "full"}))
            .await
            .ok(),
        json!({"compatibility": "FULL"})
    );
    let message = api
        .put("/config", json!({"compatibility": "SIDEWAYS"}))
        .await
        .error(422, 42203)
        .to_string();
    assert!(message.contains("backward_transitive"), "{message}");
    api.put("/config", json!({})).await.error(422, 42203);

    api.get("/config/s-value").await.error(404, 40408);
    assert_eq!(
        api.get("/config/s-value?defaultToGlobal=true").await.ok(),
        json!({"compatibilityLevel": "FULL"})
    );
    api.set_level("s-value", "NONE").await;
    assert_eq!(
        api.get("/config/s-value").await.ok(),
        json!({"compatibilityLevel": "NONE"})
    );
    // The subject's level wins over the global one.
    api.register("s-value", &fields(&[SYMBOL])).await;
    api.register("s-value", &tick(r#"{"name":"n","type":"int"}"#))
        .await;
    api.register("t-value", &fields(&[SYMBOL])).await;
    api.try_register("t-value", &tick(r#"{"name":"n","type":"int"}"#))
        .await
        .error(409, 409);
    assert_eq!(
        api.delete("/config/s-value").await.ok(),
        json!({"compatibilityLevel": "NONE"})
    );
    api.get("/config/s-value").await.error(404, 40408);
    api.delete("/config/s-value").await.error(404, 40408);
    api.delete("/config/nobody").await.error(404, 40401);
    api.put("/config/__GLOBAL", json!({"compatibility": "NONE"}))
        .await
        .error(422, 42208);
    assert_eq!(
        api.delete("/config").await.ok(),
        json!({"compatibilityLevel": "FULL"})
    );
    assert_eq!(
        api.get("/config").await.ok(),
        json!({"compatibilityLevel": "BACKWARD"})
    );
}

#[tokio::test]
async fn mode_endpoints() {
    let env = start();
    let api = &env.api;
    let schema = fields(&[SYMBOL]);
    assert_eq!(api.get("/mode").await.ok(), json!({"mode": "READWRITE"}));
    api.register("m-value", &schema).await;
    assert_eq!(
        api.put("/mode", json!({"mode": "READONLY"})).await.ok(),
        json!({"mode": "READONLY"})
    );
    assert_eq!(api.get("/mode").await.ok(), json!({"mode": "READONLY"}));
    let message = api
        .try_register("m-value", &fields(&[SYMBOL, PRICE_DEFAULT]))
        .await
        .error(422, 42205)
        .to_string();
    assert!(message.contains("read-only"), "{message}");
    api.delete("/subjects/m-value").await.error(422, 42205);
    api.delete("/subjects/m-value/versions/1")
        .await
        .error(422, 42205);
    // Reads go on.
    assert_eq!(api.versions("m-value").await, json!([1]));
    api.put("/mode", json!({"mode": "IMPORT"}))
        .await
        .error(422, 42205);
    api.put("/mode", json!({"mode": "SIDEWAYS"}))
        .await
        .error(422, 42204);
    api.put("/mode", json!({"mode": "READWRITE"})).await.ok();
    api.register("m-value", &fields(&[SYMBOL, PRICE_DEFAULT]))
        .await;

    // Per subject.
    assert_eq!(
        api.put("/mode/m-value", json!({"mode": "READONLY"}))
            .await
            .ok(),
        json!({"mode": "READONLY"})
    );
    api.try_register("m-value", &fields(&[SYMBOL]))
        .await
        .error(422, 42205);
    api.register("n-value", &schema).await;
    assert_eq!(
        api.get("/mode/m-value").await.ok(),
        json!({"mode": "READONLY"})
    );
    api.get("/mode/n-value").await.error(404, 40409);
    assert_eq!(
        api.get("/mode/n-value?defaultToGlobal=true").await.ok(),
        json!({"mode": "READWRITE"})
    );
    assert_eq!(
        api.delete("/mode/m-value").await.ok(),
        json!({"mode": "READONLY"})
    );
    api.delete("/mode/m-value").await.error(404, 40409);
    api.register("m-value", &fields(&[SYMBOL])).await;
}

#[tokio::test]
async fn error_bodies_and_codes() {
    let env = start();
    let api = &env.api;
    let versions = "/subjects/e-value/versions";
    let message = api
        .try_register("e-value", &tick(r#"{"name":"a","type":"strng"}"#))
        .await
        .error(422, 42201)
        .to_string();
    assert!(message.starts_with("Invalid schema"), "{message}");
    assert!(message.contains("strng"), "{message}");
    let message = api
        .try_register("e-value", "{\"type\": \"record\", ")
        .await
        .error(422, 42201)
        .to_string();
    assert!(message.contains("JSON"), "{message}");
    let message = api
        .try_register(
            "e-value",
            &tick(r#"{"name":"a","type":"int","default":"x"}"#),
        )
        .await
        .error(422, 42201)
        .to_string();
    assert!(message.contains("default"), "{message}");
    api.try_register("e-value", "").await.error(422, 42201);
    api.post(versions, json!({})).await.error(422, 42201);
    for schema_type in ["JSON", "PROTOBUF"] {
        let message = api
            .post(versions, json!({"schema": "{}", "schemaType": schema_type}))
            .await
            .error(422, 42201)
            .to_string();
        assert!(message.contains("AVRO"), "{message}");
    }
    let message = api
        .post(
            versions,
            json!({
                "schema": fields(&[SYMBOL]),
                "references": [{"name": "x", "subject": "y", "version": 1}]
            }),
        )
        .await
        .error(422, 42201)
        .to_string();
    assert!(message.contains("references"), "{message}");
    // Explicit "AVRO" and empty references are fine.
    let ok = api
        .post(
            versions,
            json!({"schema": fields(&[SYMBOL]), "schemaType": "AVRO", "references": []}),
        )
        .await
        .ok();
    let id = ok["id"].as_i64().unwrap();

    // Bodies that are not the JSON the endpoint takes.
    api.send(
        Method::POST,
        versions,
        Some(V1_JSON),
        Some("{not json".into()),
    )
    .await
    .error(422, 422);
    let message = api
        .post(versions, json!({"schema": fields(&[SYMBOL]), "bogus": 1}))
        .await
        .error(422, 422)
        .to_string();
    assert!(message.contains("bogus"), "{message}");
    api.send(Method::POST, versions, Some(V1_JSON), Some(String::new()))
        .await
        .error(422, 422);

    // Versions, subjects and ids that are not there.
    for bad in ["abc", "0", "-2", "99999999999"] {
        let message = api
            .get(&format!("{versions}/{bad}"))
            .await
            .error(422, 42202)
            .to_string();
        assert!(message.contains(bad), "{message}");
    }
    api.get("/subjects/nobody/versions").await.error(404, 40401);
    let message = api
        .get("/subjects/nobody/versions/1")
        .await
        .error(404, 40401)
        .to_string();
    assert_eq!(message, "Subject 'nobody' not found.");
    let message = api
        .get(&format!("{versions}/7"))
        .await
        .error(404, 40402)
        .to_string();
    assert_eq!(message, "Version 7 not found.");
    let message = api
        .get("/schemas/ids/9999")
        .await
        .error(404, 40403)
        .to_string();
    assert_eq!(message, "Schema 9999 not found");
    api.get("/schemas/ids/abc").await.error(404, 404);
    api.get(&format!("/schemas/ids/{id}/subjects")).await.ok();
    api.get("/schemas/ids/9999/subjects")
        .await
        .error(404, 40403);
    api.get("/schemas/ids/9999/versions")
        .await
        .error(404, 40403);
    api.try_register("__GLOBAL", &fields(&[SYMBOL]))
        .await
        .error(422, 42208);
    // Import-style requests are refused: ids are assigned here.
    api.post(
        versions,
        json!({"schema": fields(&[SYMBOL, PRICE_DEFAULT]), "id": 100}),
    )
    .await
    .error(422, 42205);
}

#[tokio::test]
async fn content_types() {
    let env = start();
    let api = &env.api;
    let body = json!({ "schema": fields(&[SYMBOL]) }).to_string();
    let mut ids = Vec::new();
    for content_type in [
        Some(V1_JSON),
        Some("application/vnd.schemaregistry+json"),
        Some("application/json"),
        Some("application/json; charset=utf-8"),
        Some("application/octet-stream"),
        None,
    ] {
        let reply = api
            .send(
                Method::POST,
                "/subjects/ct-value/versions",
                content_type,
                Some(body.clone()),
            )
            .await;
        assert_eq!(reply.content_type, V1_JSON, "{content_type:?}");
        ids.push(reply.ok()["id"].as_i64().unwrap());
    }
    assert!(ids.windows(2).all(|w| w[0] == w[1]), "{ids:?}");
    api.send(
        Method::POST,
        "/subjects/ct-value/versions",
        Some("text/plain"),
        Some(body),
    )
    .await
    .error(415, 415);
    // Responses are Confluent's content type, errors included.
    assert_eq!(api.get("/subjects").await.content_type, V1_JSON);
    assert_eq!(
        api.get("/subjects/nobody/versions").await.content_type,
        V1_JSON
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_registrations_get_one_id() {
    let db = TestDb::new();
    // Two servers on the same tables, as with two replicas.
    let first = Registry::start(&db.url());
    let second = Registry::start(&db.url());
    let schema = fields(&[SYMBOL, r#"{"name":"bid","type":"double","default":0.0}"#]);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..24 {
        let api = Api::new(if i % 2 == 0 { &first.url } else { &second.url });
        let schema = schema.clone();
        // Half on one subject, half spread over three others.
        let subject = if i % 4 < 2 {
            "same-value".to_string()
        } else {
            format!("other-{}-value", i % 3)
        };
        tasks.spawn(async move { (subject.clone(), api.register(&subject, &schema).await) });
    }
    let results = tasks.join_all().await;
    let id = results[0].1;
    assert!(results.iter().all(|(_, i)| *i == id), "{results:?}");
    let api = Api::new(&first.url);
    for subject in [
        "same-value",
        "other-0-value",
        "other-1-value",
        "other-2-value",
    ] {
        assert_eq!(api.versions(subject).await, json!([1]), "{subject}");
    }
    assert_eq!(
        api.get(&format!("/schemas/ids/{id}/subjects")).await.ok(),
        json!([
            "other-0-value",
            "other-1-value",
            "other-2-value",
            "same-value"
        ])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_starting_together_create_the_tables_once() {
    let db = TestDb::new();
    let mut starts = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let url = db.url();
        starts.spawn(async move {
            weir::registry::server::RegistryServer::connect(&url)
                .await
                .map(|_| ())
                .map_err(|e| format!("{e:#}"))
        });
    }
    for result in starts.join_all().await {
        result.expect("connect");
    }
    let (client, connection) = tokio_postgres::connect(&db.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let row = client
        .query_one(
            "SELECT count(*) FROM information_schema.tables
              WHERE table_schema = $1 AND table_name LIKE 'schema_registry_%'",
            &[&db.schema],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 4);
}

/// A TCP proxy in front of Postgres that can be cut: a database outage without stopping
/// the database the other tests use.
struct Proxy {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(port: u16, upstream: String) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    accepted = listener.accept() => {
                        let Ok((mut inbound, _)) = accepted else { continue };
                        let upstream = upstream.clone();
                        connections.spawn(async move {
                            if let Ok(mut outbound) = tokio::net::TcpStream::connect(&upstream).await {
                                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                            }
                        });
                    }
                }
            }
            // Dropping the tasks drops both ends of every connection.
            connections.shutdown().await;
        });
        Self {
            stop: Some(stop),
            task,
        }
    }

    /// Closes the listener and every connection through it.
    async fn cut(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap();
    }
}

/// `url` with its host and port replaced by 127.0.0.1:`port`, and the host:port it had.
fn redirect(url: &str, port: u16) -> (String, String) {
    let (scheme, rest) = url.split_once("://").unwrap();
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (user, host) = match authority.rsplit_once('@') {
        Some((user, host)) => (format!("{user}@"), host),
        None => (String::new(), authority),
    };
    let upstream = if host.contains(':') {
        host.to_string()
    } else {
        format!("{host}:5432")
    };
    (format!("{scheme}://{user}127.0.0.1:{port}{tail}"), upstream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_fails_requests_and_the_server_recovers() {
    let db = TestDb::new();
    let port = free_port();
    let (url, upstream) = redirect(&db.url(), port);
    let proxy = Proxy::start(port, upstream.clone()).await;
    let registry = Registry::start(&url);
    let api = Api::new(&registry.url);
    let v1 = fields(&[SYMBOL]);
    let id = api.register("o-value", &v1).await;

    proxy.cut().await;
    for reply in [
        api.get("/subjects").await,
        api.try_register("o-value", &fields(&[SYMBOL, PRICE_DEFAULT]))
            .await,
        api.get(&format!("/schemas/ids/{id}")).await,
    ] {
        assert_eq!(reply.status, 500, "{}", reply.text);
        let code = reply.body["error_code"].as_i64();
        assert!(matches!(code, Some(50001 | 50002)), "{}", reply.text);
    }

    let proxy = Proxy::start(port, upstream).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let reply = api.get("/subjects").await;
        if reply.status == 200 {
            assert_eq!(reply.body, json!(["o-value"]));
            break;
        }
        assert!(Instant::now() < deadline, "no recovery: {}", reply.text);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(api.register("o-value", &v1).await, id);
    api.register("o-value", &fields(&[SYMBOL, PRICE_DEFAULT]))
        .await;
    assert_eq!(api.versions("o-value").await, json!([1, 2]));
    drop(api);
    drop(registry);
    proxy.cut().await;
}

#[tokio::test]
async fn cli_serves_until_sigterm() {
    let db = TestDb::new();
    let address = format!("127.0.0.1:{}", free_port());
    let child = Command::new(weir_bin())
        .args(["registry", "serve", "--database-url", &db.url()])
        .env("WEIR_REGISTRY_LISTEN", &address)
        .env("WEIR_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start weir registry serve");
    wait_for_port(&address, Duration::from_secs(60));
    let api = Api::new(&format!("http://{address}"));
    api.register("cli-value", &fields(&[SYMBOL])).await;
    assert_eq!(api.get("/subjects").await.ok(), json!(["cli-value"]));
    drop(api);
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("Schema registry listening"), "{stderr}");
    assert!(stderr.contains(&address), "{stderr}");
    assert!(stderr.contains("SIGTERM"), "{stderr}");
}

/// `weir registry serve` requiring basic auth, behind TLS: 401 without credentials (with
/// Confluent's body), 403 for a read-only user's write, and weir's own client and
/// `weir schemas push` authenticated over https with the test's CA.
#[tokio::test]
async fn the_server_requires_basic_auth_and_the_client_speaks_https_with_it() {
    let db = TestDb::new();
    let ca = weir_tests::TestCa::new();
    let (cert, key) = ca.issue("localhost", &["DNS:localhost"]);
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    std::fs::write(&users, "ci:s3cr:et:write\nviewer:look:read\n").unwrap();
    let plain = format!("127.0.0.1:{}", free_port());
    let mut child = Command::new(weir_bin())
        .args([
            "registry",
            "serve",
            "--database-url",
            &db.url(),
            "--users-file",
        ])
        .arg(&users)
        .env("WEIR_REGISTRY_LISTEN", &plain)
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start weir registry serve");
    wait_for_port(&plain, Duration::from_secs(60));
    let port = free_port();
    let _tls = weir_tests::TlsTerminator::start(port, &plain, &cert, &key);
    let url = format!("https://localhost:{port}");

    let pem = std::fs::read(ca.cert()).unwrap();
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .build()
        .unwrap();
    let answer = |r: reqwest::RequestBuilder| async move {
        let r = r.send().await.unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    };
    let (status, body) = answer(http.get(format!("{url}/subjects"))).await;
    assert_eq!(
        (status, body),
        (401, json!({"error_code": 401, "message": "Unauthorized"}))
    );
    let (status, _) = answer(
        http.get(format!("{url}/subjects"))
            .basic_auth("ci", Some("wrong")),
    )
    .await;
    assert_eq!(status, 401);
    let (status, body) = answer(
        http.get(format!("{url}/subjects"))
            .basic_auth("viewer", Some("look")),
    )
    .await;
    assert_eq!((status, body), (200, json!([])));
    let schema = json!({"schema": fields(&[SYMBOL])});
    let (status, body) = answer(
        http.post(format!("{url}/subjects/auth-value/versions"))
            .basic_auth("viewer", Some("look"))
            .json(&schema),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error_code"], 40301, "{body}");

    // weir schemas push: refused without credentials, registered with them.
    let schemas = dir.path().join("schemas");
    std::fs::create_dir(&schemas).unwrap();
    std::fs::write(schemas.join("auth.avsc"), fields(&[SYMBOL])).unwrap();
    let push = |extra: &[&str]| {
        let mut cmd = Command::new(weir_bin());
        cmd.args(["schemas", "push", "--registry", &url, "--registry-ca"])
            .arg(ca.cert())
            .args(extra)
            .arg(&schemas)
            .env_remove("SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO");
        cmd.output().unwrap()
    };
    let out = push(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "pushed without credentials");
    assert!(
        stderr.contains("401") || stderr.contains("Unauthorized"),
        "{stderr}"
    );
    let out = push(&["--registry-basic-auth", "ci:s3cr:et"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The client the pipelines use: a read-only user is enough, from the URL or the flags.
    let client = weir::registry::RegistryClient::with_auth(
        &format!("https://viewer:look@localhost:{port}"),
        &weir::registry::RegistryAuth {
            ca: Some(ca.cert()),
            ..Default::default()
        },
    )
    .unwrap();
    let latest = client.latest("auth-value").await.unwrap();
    use weir::registry::SchemaSource as _;
    assert_eq!(client.schema_by_id(latest.id).await.unwrap().id, latest.id);
    // Without the CA the certificate is refused.
    let e = weir::registry::RegistryClient::new(&format!("https://localhost:{port}"))
        .unwrap()
        .latest("auth-value")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("certificate") || e.contains("error sending request"),
        "{e}"
    );
    let _ = child.kill();
    let _ = child.wait();
}
