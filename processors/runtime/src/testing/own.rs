//! A broker and a PostgreSQL server of the test's own, for tests that
//! restart or break them.

use super::{free_port, scratch_dir};

/// An Apache Kafka broker of the test's own (`scripts/kafka-broker`), its
/// data in a scratch directory so that it survives a restart.
pub struct OwnBroker {
    process: Option<std::process::Child>,
    port: u16,
    controller_port: u16,
    dir: std::path::PathBuf,
    java_opts: String,
}

impl OwnBroker {
    /// Starts it on a free port and waits until it answers metadata
    /// requests (a JVM broker listens some seconds before it is ready).
    pub fn start() -> OwnBroker {
        Self::start_with(|_, _| String::new(), "")
    }

    /// Starts it with the server.properties `properties` writes for its
    /// plaintext port and controller port (other listeners, their
    /// security, an authorizer) and more JVM options; the plaintext port
    /// stays its [`OwnBroker::address`]. Empty properties: the script's.
    pub fn start_with(properties: impl Fn(u16, u16) -> String, java_opts: &str) -> OwnBroker {
        let mut broker = OwnBroker {
            process: None,
            port: free_port(),
            controller_port: free_port(),
            dir: scratch_dir("kafka"),
            java_opts: java_opts.to_string(),
        };
        let text = properties(broker.port, broker.controller_port);
        if !text.is_empty() {
            let dir = broker.dir.join("broker");
            std::fs::create_dir_all(&dir).unwrap();
            let text = text.replace("{log.dirs}", &dir.join("data").display().to_string());
            std::fs::write(dir.join("server.properties"), text).unwrap();
        }
        broker.launch();
        broker
    }

    fn launch(&mut self) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/kafka-broker");
        // Its log stays beside its data, across restarts, for a look after a run.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("broker.log"))
            .expect("the broker's log file");
        let child = std::process::Command::new(script)
            .arg(self.dir.join("broker"))
            .arg(self.port.to_string())
            .arg(self.controller_port.to_string())
            .env("PSYMATCH_KAFKA_JAVA_OPTS", &self.java_opts)
            .stdout(log.try_clone().expect("the broker's log file"))
            .stderr(log)
            .spawn()
            .expect("scripts/kafka-broker (Kafka from scripts/install-tools)");
        self.process = Some(child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        loop {
            if crate::broker::check(&self.address(), std::time::Duration::from_secs(1)).is_ok() {
                break;
            }
            if let Some(status) = self
                .process
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "the broker exited ({status}); see {}",
                    self.dir.join("broker.log").display()
                );
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the broker did not answer within 120 s; see {}",
                self.dir.join("broker.log").display()
            );
        }
    }

    /// Kills it (SIGKILL) and starts it again on the same data.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    /// Kills it (SIGKILL); its data stays for [`OwnBroker::resume`].
    pub fn kill(&mut self) {
        if let Some(mut child) = self.process.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// Starts it again on its port and data after [`OwnBroker::kill`].
    pub fn resume(&mut self) {
        assert!(self.process.is_none(), "the broker runs already");
        self.launch();
    }

    /// Its bootstrap address.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        if let Some(mut child) = self.process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A PostgreSQL cluster of the test's own (initdb as the postgres user).
pub struct OwnPostgres {
    bin: String,
    dir: std::path::PathBuf,
    port: u16,
}

impl OwnPostgres {
    /// Creates it (initdb) on a free port, not started.
    fn create() -> OwnPostgres {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL server binaries")
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("bin"))
            .max()
            .unwrap()
            .display()
            .to_string();
        let port = free_port();
        let dir = scratch_dir("pg");
        std::process::Command::new("chown")
            .args(["postgres", dir.to_str().unwrap()])
            .status()
            .unwrap();
        let initdb = std::process::Command::new("runuser")
            .args([
                "-u",
                "postgres",
                "--",
                &format!("{bin}/initdb"),
                "-D",
                dir.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=trust",
            ])
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(initdb.success());
        OwnPostgres { bin, dir, port }
    }

    /// Creates and starts it on a free port.
    pub fn start() -> OwnPostgres {
        let cluster = OwnPostgres::create();
        cluster.pg_ctl("start");
        cluster
    }

    /// Creates and starts it with TLS only (`ssl=on`, a certificate for
    /// 127.0.0.1 signed by `ca`; connections without TLS are refused).
    pub fn start_tls(ca: &super::tls::Ca) -> OwnPostgres {
        let cluster = OwnPostgres::create();
        let (cert, key) = ca.issue("postgres-server", "IP:127.0.0.1,DNS:localhost");
        let (server_cert, server_key) = (
            cluster.dir.join("server.pem"),
            cluster.dir.join("server.key"),
        );
        std::fs::copy(cert, &server_cert).unwrap();
        std::fs::copy(key, &server_key).unwrap();
        // PostgreSQL reads its key only if no one else may.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&server_key, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::process::Command::new("chown")
            .args([
                "postgres",
                server_cert.to_str().unwrap(),
                server_key.to_str().unwrap(),
            ])
            .status()
            .unwrap();
        let conf = cluster.dir.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).unwrap();
        text.push_str(&format!(
            "\nssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n",
            server_cert.display(),
            server_key.display()
        ));
        std::fs::write(&conf, text).unwrap();
        std::fs::write(
            cluster.dir.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\n",
        )
        .unwrap();
        cluster.pg_ctl("start");
        cluster
    }

    /// Runs `pg_ctl <action>` on it (`restart`, `stop`, `start`).
    pub fn pg_ctl(&self, action: &str) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.display()
        );
        let status = self
            .pg_ctl_command()
            .args([
                "-l",
                &format!("{}/log", self.dir.display()),
                "-w",
                "-m",
                "fast",
                "-o",
                &options,
                action,
            ])
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "pg_ctl {action}");
    }

    /// `pg_ctl -D <dir>` run as the postgres user (it refuses root).
    fn pg_ctl_command(&self) -> std::process::Command {
        let mut command = std::process::Command::new("runuser");
        command.args([
            "-u",
            "postgres",
            "--",
            &format!("{}/pg_ctl", self.bin),
            "-D",
            self.dir.to_str().unwrap(),
        ]);
        command
    }

    /// URL of its `postgres` database (superuser, trust).
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Sets `name = value` in its configuration (a restart applies it).
    pub fn set(&self, name: &str, value: &str) {
        let conf = self.dir.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).unwrap();
        text.push_str(&format!("\n{name} = {value}\n"));
        std::fs::write(&conf, text).unwrap();
    }
}

/// Debian's PgBouncer (`scripts/install-tools`) in front of an
/// [`OwnPostgres`] started with TLS, TLS on both sides: clients must speak
/// TLS to it (its certificate for 127.0.0.1 signed by `ca`), and it
/// verifies the server's (`verify-full`). Session pooling: psymatch's
/// connections prepare statements and, in lease mode, hold advisory
/// locks, which transaction pooling would hand to another client.
pub struct OwnPgBouncer {
    dir: std::path::PathBuf,
    port: u16,
    child: super::KillOnDrop,
}

impl OwnPgBouncer {
    /// Starts it for `postgres` (which trusts every local role) with at
    /// most `pool_size` server connections per database and role; waits
    /// until it accepts connections.
    pub fn start(postgres: &OwnPostgres, ca: &super::tls::Ca, pool_size: u32) -> OwnPgBouncer {
        let dir = scratch_dir("pgbouncer");
        let port = free_port();
        let (cert, key) = ca.issue("pgbouncer", "IP:127.0.0.1,DNS:localhost");
        // Trust, as the server does; the roles psymatch connects as.
        let users: String = ["postgres"]
            .into_iter()
            .map(str::to_string)
            .chain(
                crate::db::PROCESSOR_SCHEMAS
                    .iter()
                    .map(|s| crate::db::role_of(s)),
            )
            .map(|role| format!("\"{role}\" \"\"\n"))
            .collect();
        std::fs::write(dir.join("users.txt"), users).unwrap();
        let ini = format!(
            "[databases]\n* = host=127.0.0.1 port={pg}\n\n[pgbouncer]\n\
             listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
             auth_type = trust\nauth_file = {dir}/users.txt\nadmin_users = postgres\n\
             pool_mode = session\ndefault_pool_size = {pool_size}\nmax_client_conn = 2000\n\
             ignore_startup_parameters = extra_float_digits\n\
             client_tls_sslmode = require\nclient_tls_cert_file = {cert}\nclient_tls_key_file = {key}\n\
             server_tls_sslmode = verify-full\nserver_tls_ca_file = {ca}\n\
             logfile = {dir}/pgbouncer.log\n",
            pg = postgres.port,
            dir = dir.display(),
            cert = cert.display(),
            key = key.display(),
            ca = ca.cert.display(),
        );
        std::fs::write(dir.join("pgbouncer.ini"), ini).unwrap();
        // PgBouncer will not run as root: as postgres, who must read it all.
        for path in [&dir, &ca.dir] {
            std::process::Command::new("chown")
                .args(["-R", "postgres", path.to_str().unwrap()])
                .status()
                .unwrap();
        }
        let child = std::process::Command::new("/usr/sbin/pgbouncer")
            .args([
                "-u",
                "postgres",
                dir.join("pgbouncer.ini").to_str().unwrap(),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("pgbouncer (scripts/install-tools installs it)");
        let bouncer = OwnPgBouncer {
            dir,
            port,
            child: super::KillOnDrop(child),
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "pgbouncer did not listen: {}",
                std::fs::read_to_string(bouncer.dir.join("pgbouncer.log")).unwrap_or_default()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        bouncer
    }

    /// Its address (`127.0.0.1:<port>`).
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Its log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default()
    }

    /// Whether it still runs.
    pub fn running(&mut self) -> bool {
        self.child.0.try_wait().ok().flatten().is_none()
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let _ = self
            .pg_ctl_command()
            .args(["-m", "immediate", "stop"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
