//! The HTTP surface against clients that misbehave: half-sent requests are
//! closed after the header-read timeout, connections beyond the limit wait
//! until one closes, and every refusal is JSON with a code.

use axum::Router;
use axum::extract::Path;
use axum::routing::get;
use psymatch_runtime::surface::{Limits, accept, refusals_as_json};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// A surface with one path-extracting route, served within `limits`.
async fn serve(limits: Limits) -> std::net::SocketAddr {
    let app = Router::new().route(
        "/v1/things/{id}",
        get(|Path(id): Path<String>| async move { axum::Json(serde_json::json!({"id": id})) }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(accept(listener, refusals_as_json(app), limits));
    address
}

/// A connection that sent half a request's headers.
fn half_sent(address: std::net::SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .write_all(b"GET /v1/things/a HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    stream
}

/// Whether the server closed `stream` (end of stream or reset), reading
/// whatever it sent first, waiting at most `within`.
fn closed(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buffer = [0u8; 1024];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut buffer) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false;
            }
            Err(_) => return true,
        }
    }
}

/// One whole request on a new connection: (status, content type, body).
fn get_raw(address: std::net::SocketAddr, request: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut text = Vec::new();
    stream.read_to_end(&mut text).unwrap();
    let text = String::from_utf8_lossy(&text).into_owned();
    let status = text[9..12].parse().unwrap();
    let content_type = text
        .lines()
        .find_map(|l| l.strip_prefix("content-type: "))
        .unwrap_or("")
        .to_string();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, content_type, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_requests_are_closed_and_connections_are_capped() {
    let address = serve(Limits {
        connections: 3,
        header_read: Duration::from_millis(500),
        header_bytes: 4096,
        body_bytes: 1024,
    })
    .await;
    // Clients block: they run beside the server's runtime.
    tokio::task::spawn_blocking(move || {
        let mut held: Vec<TcpStream> = (0..3).map(|_| half_sent(address)).collect();
        // A fourth client gets its answer only once a permit is free, which
        // only a closed half-sent connection gives back.
        let (status, _, _) = get_raw(
            address,
            "GET /v1/things/b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(status, 200);
        let mut closed_first = 0;
        for stream in &mut held {
            if closed(stream, Duration::from_millis(1)) {
                closed_first += 1;
            }
        }
        assert!(
            closed_first >= 1,
            "the fourth was served while three were open"
        );
        // And every half-sent request is closed within the timeout's reach.
        for stream in &mut held {
            assert!(closed(stream, Duration::from_secs(10)));
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_is_json_with_a_code() {
    let address = serve(Limits::default()).await;
    let long_path = format!(
        "GET /v1/things/{} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "a".repeat(10_000)
    );
    let huge_path = long_path.replace(&"a".repeat(10_000), &"a".repeat(70_000));
    let large_headers = format!(
        "GET /v1/things/a HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "b".repeat(100_000)
    );
    tokio::task::spawn_blocking(move || {
        for (request, status, error) in [
            ("GET /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 404, "not_found"),
            (
                "POST /v1/things/a HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                405,
                "method_not_allowed",
            ),
            (
                "GET /v1/things/%ff%fe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                400,
                "bad_request",
            ),
            // What hyper answers by itself, before any route runs.
            ("GET /v1/things/a HTTP/1.1\r\nHost x\r\n\r\n", 400, "bad_request"),
            (&long_path, 414, "uri_too_long"),
            (&huge_path, 431, "request_header_fields_too_large"),
            (&large_headers, 431, "request_header_fields_too_large"),
        ] {
            let (got, content_type, body) = get_raw(address, request);
            let request = &request[..request.len().min(60)];
            assert_eq!(got, status, "{request}: {body}");
            assert!(content_type.starts_with("application/json"), "{request}: {content_type}");
            let body: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(body["error"], error, "{request}: {body}");
            assert!(!body["message"].as_str().unwrap().is_empty());
        }
    })
    .await
    .unwrap();
}

/// A guarded query route served with `tokens` (`QUERY_TOKENS`).
async fn serve_guarded(tokens: &str) -> std::net::SocketAddr {
    let routes = Router::new().route("/v1/things/{id}", get(|| async { "{}" }));
    let tokens = std::sync::Arc::new(psymatch_runtime::query::Tokens::parse(tokens).unwrap());
    let metrics = std::sync::Arc::new(psymatch_runtime::surface::Metrics::new("test"));
    let app = psymatch_runtime::query::guarded(routes, tokens, metrics);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(accept(listener, refusals_as_json(app), Limits::default()));
    address
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_says_whether_any_token_is_configured() {
    let none = serve_guarded("").await;
    let some = serve_guarded("desk:staff:0123456789abcdef0123").await;
    tokio::task::spawn_blocking(move || {
        let request = "GET /v1/things/a HTTP/1.1\r\nHost: x\r\nAuthorization: bearer 0123456789abcdef0123\r\nConnection: close\r\n\r\n";
        let (status, _, body) = get_raw(none, request);
        assert_eq!(status, 401);
        assert!(body.contains("no query tokens configured") && body.contains("QUERY_TOKENS"), "{body}");
        // The same token, configured, and the scheme in lower case.
        let (status, _, body) = get_raw(some, request);
        assert_eq!(status, 200, "{body}");
        let wrong = request.replace("0123456789abcdef0123", "not-the-token-at-all");
        let (status, _, body) = get_raw(some, &wrong);
        assert_eq!(status, 401);
        assert!(body.contains("with a configured token"), "{body}");
    })
    .await
    .unwrap();
}
