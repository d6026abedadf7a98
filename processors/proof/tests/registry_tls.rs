//! The schema registry over TLS with authentication, as registries are
//! commonly run: nginx in front (Debian's, `scripts/install-tools`) with a
//! certificate from a throwaway CA, one server asking for HTTP basic auth
//! and one for a bearer token. `psymatch schemas register` and a processor
//! (intake: decoding its input and encoding its output through the
//! registry) work with `SCHEMA_REGISTRY_CA_FILE` and the credentials from
//! files; a wrong password, a missing CA and a wrong token are each refused
//! in one line saying what to do, without the secret.

use psymatch_intake::Intake;
use psymatch_proof::processes::{refused_in_one_line, tool};
use psymatch_runtime::testing::tls::Ca;
use psymatch_runtime::testing::{KillOnDrop, Running, TestBed, free_port, scratch_dir};
use std::path::{Path, PathBuf};
use std::time::Duration;

const PASSWORD: &str = "registry-password-for-tests";
const TOKEN: &str = "registry-token-for-tests-0123456789";

/// nginx with TLS in front of `upstream`: `https://127.0.0.1:<basic>`
/// asks for basic auth, `https://127.0.0.1:<token>` for the bearer token.
struct Front {
    basic: u16,
    token: u16,
    _nginx: KillOnDrop,
}

fn front(upstream: &str, ca: &Ca, dir: &Path) -> Front {
    let (cert, key) = ca.issue("registry", "IP:127.0.0.1,DNS:localhost");
    let hash = std::process::Command::new("openssl")
        .args(["passwd", "-apr1", PASSWORD])
        .output()
        .unwrap();
    let hash = String::from_utf8(hash.stdout).unwrap();
    std::fs::write(dir.join("htpasswd"), format!("psymatch:{}", hash.trim())).unwrap();
    let (basic, token) = (free_port(), free_port());
    let upstream = upstream.trim_start_matches("http://").trim_end_matches('/');
    let d = dir.display();
    let tls = format!(
        "ssl_certificate {}; ssl_certificate_key {};",
        cert.display(),
        key.display()
    );
    let conf = format!(
        "daemon off; master_process off; worker_processes 1; pid {d}/nginx.pid; error_log {d}/error.log;\n\
         events {{}}\n\
         http {{\n\
           access_log off; client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;\n\
           fastcgi_temp_path {d}/fastcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
           server {{ listen 127.0.0.1:{basic} ssl; {tls}\n\
             location / {{ auth_basic registry; auth_basic_user_file {d}/htpasswd;\n\
               proxy_set_header Authorization \"\"; proxy_pass http://{upstream}; }} }}\n\
           server {{ listen 127.0.0.1:{token} ssl; {tls}\n\
             location / {{ if ($http_authorization != \"Bearer {TOKEN}\") {{ return 401; }}\n\
               proxy_set_header Authorization \"\"; proxy_pass http://{upstream}; }} }}\n\
         }}\n"
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let nginx = std::process::Command::new("/usr/sbin/nginx")
        .args(["-p", &d.to_string(), "-c", &format!("{d}/nginx.conf")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("nginx (scripts/install-tools installs it)");
    let nginx = KillOnDrop(nginx);
    for port in [basic, token] {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "nginx did not listen: {}",
                std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Front {
        basic,
        token,
        _nginx: nginx,
    }
}

fn secret(dir: &Path, name: &str, value: &str) -> String {
    let path: PathBuf = dir.join(name);
    std::fs::write(&path, format!("{value}\n")).unwrap();
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_and_authentication_to_the_registry_from_the_tool_and_a_processor() {
    let bed = TestBed::new().await;
    let dir = scratch_dir("registry-front");
    let ca = Ca::new("psymatch registry CA");
    let front = front(&bed.registry_url, &ca, &dir);
    let basic_url = format!("https://127.0.0.1:{}", front.basic);
    let token_url = format!("https://127.0.0.1:{}", front.token);
    let ca_file = ca.cert.display().to_string();
    let password = secret(&dir, "password", PASSWORD);
    let token = secret(&dir, "token", TOKEN);

    // The tool, with basic auth.
    let basic = |password_file: &str, ca: Option<&str>| {
        let mut env = vec![
            ("SCHEMA_REGISTRY_URL", Some(basic_url.clone())),
            ("SCHEMA_REGISTRY_USERNAME", Some("psymatch".to_string())),
            (
                "SCHEMA_REGISTRY_PASSWORD_FILE",
                Some(password_file.to_string()),
            ),
        ];
        env.push(("SCHEMA_REGISTRY_CA_FILE", ca.map(str::to_string)));
        tool(&bed, &env, &["schemas", "register"])
    };
    let registered = basic(&password, Some(&ca_file));
    assert!(
        registered.status.success(),
        "{}",
        String::from_utf8_lossy(&registered.stderr)
    );
    assert!(String::from_utf8_lossy(&registered.stdout).contains("registered "));
    let wrong = secret(&dir, "wrong", "not-the-password");
    for (out, expected) in [
        (
            basic(&wrong, Some(&ca_file)),
            "refused the credentials (401): check SCHEMA_REGISTRY_USERNAME and SCHEMA_REGISTRY_PASSWORD_FILE",
        ),
        (
            basic(&password, None),
            "is not trusted: set SCHEMA_REGISTRY_CA_FILE to the CA that signed it",
        ),
    ] {
        let stderr = refused_in_one_line(&out, expected);
        assert!(!stderr.contains("not-the-password") && !stderr.contains(PASSWORD));
    }

    // A processor through the token front: its registration decoded and
    // the event encoded with schemas looked up over TLS.
    let mut vars: std::collections::BTreeMap<String, String> =
        bed.env("intake").into_iter().collect();
    vars.insert("SCHEMA_REGISTRY_URL".into(), token_url.clone());
    vars.insert("SCHEMA_REGISTRY_CA_FILE".into(), ca_file.clone());
    vars.insert("SCHEMA_REGISTRY_TOKEN_FILE".into(), token.clone());
    let port = free_port();
    vars.insert("HTTP_LISTEN".into(), format!("127.0.0.1:{port}"));
    let config = psymatch_runtime::config::RuntimeConfig::from_vars("intake", &vars).unwrap();
    assert!(!format!("{:?}", config.registry).contains(TOKEN));
    let intake = Running::start(Intake, config);
    bed.registers("registry-tls-1").await;
    let ready: serde_json::Value =
        reqwest::get(format!("http://127.0.0.1:{port}/health/readiness"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert_eq!(ready["checks"]["registry"], "ok", "{ready}");
    intake.stop().await;

    // A wrong token is refused in one line.
    let wrong_token = secret(&dir, "wrong-token", "not-the-token-0123456789");
    let out = tool(
        &bed,
        &[
            ("SCHEMA_REGISTRY_URL", Some(token_url)),
            ("SCHEMA_REGISTRY_CA_FILE", Some(ca_file)),
            ("SCHEMA_REGISTRY_TOKEN_FILE", Some(wrong_token)),
        ],
        &["schemas", "register"],
    );
    let stderr = refused_in_one_line(&out, "refused the credentials (401)");
    assert!(!stderr.contains("not-the-token"), "{stderr}");
}
