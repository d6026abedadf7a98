//! The registry's REST API against real PostgreSQL, over real HTTP, checked
//! the way Confluent clients see it: status codes, error bodies, media type.

use psymatch_runtime::testing::fresh_database;
use reqwest::{Client, Method, StatusCode};
use serde_json::{Value, json};

struct Registry {
    url: String,
    http: Client,
}

impl Registry {
    async fn start() -> Registry {
        let (pool, _) = fresh_database().await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            axum::serve(listener, psymatch_registry::router(pool))
                .await
                .unwrap();
        });
        Registry {
            url,
            http: Client::new(),
        }
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.url));
        if let Some(body) = body {
            request = request
                .header("Content-Type", "application/vnd.schemaregistry.v1+json")
                .body(body.to_string());
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        assert_eq!(
            response.headers()["content-type"],
            psymatch_registry::CONTENT_TYPE,
            "{path}"
        );
        (status, response.json().await.unwrap())
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, None).await
    }

    async fn register(&self, subject: &str, schema: &str) -> (StatusCode, Value) {
        let path = format!("/subjects/{subject}/versions");
        self.call(Method::POST, &path, Some(json!({"schema": schema})))
            .await
    }

    async fn set_level(&self, subject: &str, level: &str) {
        let body = json!({"compatibility": level});
        let (status, reply) = self
            .call(Method::PUT, &format!("/config/{subject}"), Some(body))
            .await;
        assert_eq!(
            (status, reply),
            (StatusCode::OK, json!({"compatibility": level}))
        );
    }
}

/// A record schema with the given fields (JSON fragments).
fn record(fields: &[&str]) -> String {
    format!(
        r#"{{"type":"record","name":"Thing","namespace":"t","fields":[{}]}}"#,
        fields.join(",")
    )
}

const A: &str = r#"{"name":"a","type":"string"}"#;
const B_DEFAULT: &str = r#"{"name":"b","type":"int","default":0}"#;
const B_REQUIRED: &str = r#"{"name":"b","type":"int"}"#;
const C_DEFAULT: &str = r#"{"name":"c","type":"string","default":""}"#;

fn error_code(reply: &Value) -> i64 {
    assert!(
        reply["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{reply}"
    );
    reply["error_code"].as_i64().unwrap()
}

#[tokio::test]
async fn register_read_and_lookup() {
    let registry = Registry::start().await;
    let v1 = record(&[A]);
    let (status, first) = registry.register("things-value", &v1).await;
    assert_eq!(status, StatusCode::OK);
    let id = first["id"].as_i64().unwrap();

    // Same schema, other formatting: same id, no new version.
    let spaced = v1.replace(',', ", ");
    let (_, again) = registry.register("things-value", &spaced).await;
    assert_eq!(again["id"].as_i64(), Some(id));
    // Same schema under another subject: same id.
    let (_, other) = registry.register("others-value", &v1).await;
    assert_eq!(other["id"].as_i64(), Some(id));

    let v2 = record(&[A, B_DEFAULT]);
    let (_, second) = registry.register("things-value", &v2).await;
    let id2 = second["id"].as_i64().unwrap();
    assert_ne!(id2, id);

    let (_, by_id) = registry.get(&format!("/schemas/ids/{id}")).await;
    assert_eq!(by_id["schema"], v1);
    assert_eq!(
        registry.get("/subjects").await.1,
        json!(["others-value", "things-value"])
    );
    assert_eq!(
        registry.get("/subjects/things-value/versions").await.1,
        json!([1, 2])
    );
    let (_, latest) = registry.get("/subjects/things-value/versions/latest").await;
    assert_eq!(
        latest,
        json!({"subject": "things-value", "version": 2, "id": id2, "schema": v2})
    );
    let (_, first_version) = registry.get("/subjects/things-value/versions/1").await;
    assert_eq!(first_version["id"].as_i64(), Some(id));
    let (_, raw) = registry
        .get("/subjects/things-value/versions/2/schema")
        .await;
    assert_eq!(raw["fields"][1]["name"], "b");
    let (_, uses) = registry.get(&format!("/schemas/ids/{id}/versions")).await;
    assert_eq!(
        uses,
        json!([{"subject": "others-value", "version": 1}, {"subject": "things-value", "version": 1}])
    );

    let (status, found) = registry
        .call(
            Method::POST,
            "/subjects/things-value",
            Some(json!({"schema": v2})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(found["version"], 2);
    assert_eq!(found["id"].as_i64(), Some(id2));
}

#[tokio::test]
async fn errors_have_confluent_codes_and_messages() {
    let registry = Registry::start().await;
    let v1 = record(&[A]);
    registry.register("things-value", &v1).await;

    let cases: Vec<(Method, String, Option<Value>, StatusCode, i64)> = vec![
        (
            Method::GET,
            "/subjects/nothing/versions".into(),
            None,
            StatusCode::NOT_FOUND,
            40401,
        ),
        (
            Method::GET,
            "/subjects/nothing/versions/1".into(),
            None,
            StatusCode::NOT_FOUND,
            40401,
        ),
        (
            Method::GET,
            "/subjects/things-value/versions/7".into(),
            None,
            StatusCode::NOT_FOUND,
            40402,
        ),
        (
            Method::GET,
            "/schemas/ids/9999".into(),
            None,
            StatusCode::NOT_FOUND,
            40403,
        ),
        (
            Method::GET,
            "/subjects/things-value/versions/zero".into(),
            None,
            StatusCode::UNPROCESSABLE_ENTITY,
            42202,
        ),
        (
            Method::POST,
            "/subjects/things-value".into(),
            Some(json!({"schema": record(&[A, C_DEFAULT])})),
            StatusCode::NOT_FOUND,
            40403,
        ),
        (
            Method::POST,
            "/subjects/nothing".into(),
            Some(json!({"schema": v1})),
            StatusCode::NOT_FOUND,
            40401,
        ),
        (
            Method::POST,
            "/subjects/things-value/versions".into(),
            Some(json!({"schema": "{\"type\": \"record\", \"name\": \"x\"}"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            42201,
        ),
        (
            Method::POST,
            "/subjects/things-value/versions".into(),
            Some(json!({"schema": "not json"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            42201,
        ),
        (
            Method::POST,
            "/subjects/things-value/versions".into(),
            Some(json!({"schema": "{}", "schemaType": "PROTOBUF"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            42201,
        ),
        (
            Method::PUT,
            "/config".into(),
            Some(json!({"compatibility": "SIDEWAYS"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            42203,
        ),
        (
            Method::GET,
            "/config/things-value".into(),
            None,
            StatusCode::NOT_FOUND,
            40408,
        ),
        (
            Method::DELETE,
            "/subjects/nothing".into(),
            None,
            StatusCode::NOT_FOUND,
            40401,
        ),
        (
            Method::DELETE,
            "/subjects/things-value?permanent=true".into(),
            None,
            StatusCode::NOT_FOUND,
            40405,
        ),
    ];
    for (method, path, body, status, code) in cases {
        let (got_status, reply) = registry.call(method.clone(), &path, body).await;
        assert_eq!(got_status, status, "{method} {path}: {reply}");
        assert_eq!(error_code(&reply), code, "{method} {path}: {reply}");
    }
}

#[tokio::test]
async fn config_global_and_per_subject() {
    let registry = Registry::start().await;
    assert_eq!(
        registry.get("/config").await.1,
        json!({"compatibilityLevel": "BACKWARD"})
    );
    let (_, reply) = registry
        .call(
            Method::PUT,
            "/config",
            Some(json!({"compatibility": "FULL"})),
        )
        .await;
    assert_eq!(reply, json!({"compatibility": "FULL"}));
    assert_eq!(
        registry.get("/config").await.1,
        json!({"compatibilityLevel": "FULL"})
    );
    assert_eq!(
        registry.get("/config/s-value?defaultToGlobal=true").await.1,
        json!({"compatibilityLevel": "FULL"})
    );
    registry.set_level("s-value", "NONE").await;
    assert_eq!(
        registry.get("/config/s-value").await.1,
        json!({"compatibilityLevel": "NONE"})
    );
    let (status, _) = registry.call(Method::DELETE, "/config/s-value", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        registry.get("/config/s-value").await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn delete_soft_then_permanent() {
    let registry = Registry::start().await;
    let (_, first) = registry.register("gone-value", &record(&[A])).await;
    registry
        .register("gone-value", &record(&[A, B_DEFAULT]))
        .await;
    let (status, deleted) = registry
        .call(Method::DELETE, "/subjects/gone-value", None)
        .await;
    assert_eq!((status, deleted), (StatusCode::OK, json!([1, 2])));
    assert_eq!(registry.get("/subjects").await.1, json!([]));
    assert_eq!(
        registry.get("/subjects?deleted=true").await.1,
        json!(["gone-value"])
    );
    assert_eq!(
        registry.get("/subjects/gone-value/versions").await.0,
        StatusCode::NOT_FOUND
    );
    // Ids stay resolvable for records already written with them.
    let id = first["id"].as_i64().unwrap();
    assert_eq!(
        registry.get(&format!("/schemas/ids/{id}")).await.0,
        StatusCode::OK
    );
    // Registering again continues the numbering.
    let (_, again) = registry.register("gone-value", &record(&[A])).await;
    assert_eq!(again["version"], 3);
    registry
        .call(Method::DELETE, "/subjects/gone-value", None)
        .await;
    let (status, purged) = registry
        .call(Method::DELETE, "/subjects/gone-value?permanent=true", None)
        .await;
    assert_eq!((status, purged), (StatusCode::OK, json!([1, 2, 3])));
    assert_eq!(registry.get("/subjects?deleted=true").await.1, json!([]));
}

/// One evolution per level: earlier versions, a schema the level accepts,
/// and one it refuses (a non-transitive level would accept the latter where
/// the level is transitive).
struct Evolution {
    level: &'static str,
    history: Vec<String>,
    accepted: String,
    refused: String,
}

fn evolutions() -> Vec<Evolution> {
    vec![
        Evolution {
            level: "BACKWARD",
            history: vec![record(&[A])],
            accepted: record(&[A, B_DEFAULT]),
            refused: record(&[A, B_REQUIRED]),
        },
        Evolution {
            level: "BACKWARD_TRANSITIVE",
            history: vec![record(&[A]), record(&[A, B_DEFAULT])],
            accepted: record(&[A, B_DEFAULT, C_DEFAULT]),
            // Reads version 2 (b present), not version 1.
            refused: record(&[A, B_REQUIRED]),
        },
        Evolution {
            level: "FORWARD",
            history: vec![record(&[A, B_REQUIRED])],
            accepted: record(&[A, B_REQUIRED, C_DEFAULT]),
            refused: record(&[A]),
        },
        Evolution {
            level: "FORWARD_TRANSITIVE",
            history: vec![record(&[A, B_REQUIRED]), record(&[A, B_DEFAULT])],
            accepted: record(&[A, B_REQUIRED]),
            // Version 2 reads it (b has a default there), version 1 does not.
            refused: record(&[A]),
        },
        Evolution {
            level: "FULL",
            history: vec![record(&[A])],
            accepted: record(&[A, B_DEFAULT]),
            refused: record(&[A, B_REQUIRED]),
        },
        Evolution {
            level: "FULL_TRANSITIVE",
            history: vec![record(&[A]), record(&[A, B_DEFAULT])],
            accepted: record(&[A, B_DEFAULT, C_DEFAULT]),
            refused: record(&[A, B_REQUIRED]),
        },
    ]
}

#[tokio::test]
async fn every_compatibility_level_accepts_and_refuses() {
    let registry = Registry::start().await;
    for evolution in evolutions() {
        let subject = format!("{}-value", evolution.level.to_lowercase());
        registry.set_level(&subject, evolution.level).await;
        for schema in &evolution.history {
            let (status, reply) = registry.register(&subject, schema).await;
            assert_eq!(
                status,
                StatusCode::OK,
                "{} history: {reply}",
                evolution.level
            );
        }
        let check_path = format!("/compatibility/subjects/{subject}/versions/latest?verbose=true");
        let (_, verdict) = registry
            .call(
                Method::POST,
                &check_path,
                Some(json!({"schema": evolution.refused})),
            )
            .await;
        assert_eq!(
            verdict["is_compatible"], false,
            "{}: {verdict}",
            evolution.level
        );
        assert!(!verdict["messages"].as_array().unwrap().is_empty());
        let (status, reply) = registry.register(&subject, &evolution.refused).await;
        assert_eq!(status, StatusCode::CONFLICT, "{}: {reply}", evolution.level);
        assert_eq!(error_code(&reply), 409);
        assert!(
            reply["message"].as_str().unwrap().contains(evolution.level),
            "{reply}"
        );

        let (_, verdict) = registry
            .call(
                Method::POST,
                &check_path,
                Some(json!({"schema": evolution.accepted})),
            )
            .await;
        assert_eq!(
            verdict["is_compatible"], true,
            "{}: {verdict}",
            evolution.level
        );
        let (status, reply) = registry.register(&subject, &evolution.accepted).await;
        assert_eq!(status, StatusCode::OK, "{}: {reply}", evolution.level);
    }
    // NONE accepts even a changed field type.
    registry.set_level("none-value", "NONE").await;
    registry.register("none-value", &record(&[A])).await;
    let (status, _) = registry
        .register("none-value", &record(&[r#"{"name":"a","type":"long"}"#]))
        .await;
    assert_eq!(status, StatusCode::OK);
    // A compatibility check against a fixed version looks at that version only.
    let (_, verdict) = registry
        .call(
            Method::POST,
            "/compatibility/subjects/backward_transitive-value/versions/2",
            Some(json!({"schema": record(&[A, B_REQUIRED])})),
        )
        .await;
    assert_eq!(verdict, json!({"is_compatible": true}));
}

#[tokio::test]
async fn schema_registry_converter_encodes_and_decodes_through_it() {
    use apache_avro::types::Value as Avro;
    use schema_registry_converter::async_impl::avro::{AvroDecoder, AvroEncoder};
    use schema_registry_converter::async_impl::schema_registry::SrSettings;
    use schema_registry_converter::schema_registry_common::{
        SchemaType, SubjectNameStrategy, SuppliedSchema,
    };

    let registry = Registry::start().await;
    let encoder = AvroEncoder::new(SrSettings::new(registry.url.clone()));
    let decoder = AvroDecoder::new(SrSettings::new(registry.url.clone()));
    // Auto-registration through the client (POST), then encode.
    let supplied = SuppliedSchema::new(
        Some("t.Thing".into()),
        SchemaType::Avro,
        record(&[A, B_DEFAULT]),
    );
    let strategy =
        SubjectNameStrategy::TopicNameStrategyWithSchema("things".into(), false, supplied);
    let bytes = encoder
        .encode(
            vec![("a", Avro::String("x".into())), ("b", Avro::Int(3))],
            strategy,
        )
        .await
        .unwrap();
    assert_eq!(bytes[0], 0, "Confluent magic byte");
    let id = u32::from_be_bytes(bytes[1..5].try_into().unwrap());
    let (_, latest) = registry.get("/subjects/things-value/versions/latest").await;
    assert_eq!(latest["id"].as_u64(), Some(u64::from(id)));
    // Encoding by subject lookup (GET latest), as the processors do.
    let by_lookup = encoder
        .encode_value(
            Avro::Record(vec![
                ("a".into(), Avro::String("y".into())),
                ("b".into(), Avro::Int(4)),
            ]),
            &SubjectNameStrategy::TopicNameStrategy("things".into(), false),
        )
        .await
        .unwrap();
    assert_eq!(by_lookup[1..5], bytes[1..5]);
    let decoded = decoder.decode(Some(&bytes)).await.unwrap();
    assert_eq!(
        decoded.value,
        Avro::Record(vec![
            ("a".into(), Avro::String("x".into())),
            ("b".into(), Avro::Int(3))
        ])
    );
}
