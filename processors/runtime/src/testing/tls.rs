//! A throwaway certificate authority for tests of TLS (PostgreSQL, Kafka):
//! made with the `openssl` command line, valid for two days, in a scratch
//! directory.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A CA: its certificate (what clients trust) and its key (what signs).
pub struct Ca {
    /// The directory holding everything it made.
    pub dir: PathBuf,
    /// Its certificate (PEM).
    pub cert: PathBuf,
    key: PathBuf,
}

fn openssl(args: &[&str], dir: &Path) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl (scripts/install-tools)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Ca {
    /// A new CA named `name` in a scratch directory of its own.
    pub fn new(name: &str) -> Ca {
        let dir = super::scratch_dir("ca");
        x509(
            &dir,
            "ca",
            &format!("/CN={name}"),
            &[
                "basicConstraints=critical,CA:TRUE",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        Ca {
            cert: dir.join("ca.pem"),
            key: dir.join("ca.key"),
            dir,
        }
    }

    /// A certificate for `name` (its common name) valid for the subject
    /// alternative names `sans` (`IP:127.0.0.1,DNS:localhost`), for servers
    /// and clients alike: its certificate and key files (PEM).
    pub fn issue(&self, name: &str, sans: &str) -> (PathBuf, PathBuf) {
        let extensions = self.dir.join(format!("{name}.ext"));
        std::fs::write(
            &extensions,
            format!(
                "subjectAltName={sans}\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth,clientAuth\n"
            ),
        )
        .unwrap();
        let (key, csr, cert) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
        );
        openssl(
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                &key,
                "-out",
                &csr,
            ],
            &self.dir,
        );
        openssl(
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                self.cert.to_str().unwrap(),
                "-CAkey",
                self.key.to_str().unwrap(),
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                extensions.to_str().unwrap(),
                "-out",
                &cert,
            ],
            &self.dir,
        );
        (self.dir.join(cert), self.dir.join(key))
    }
}

impl Ca {
    /// [`Ca::issue`], but the certificate expired yesterday (OpenSSL 3.0's
    /// `x509` cannot date one back: Python's `cryptography`, from the
    /// test helpers' virtualenv, signs it with this CA's key).
    pub fn issue_expired(&self, name: &str, sans_ip: &str) -> (PathBuf, PathBuf) {
        let (_, key) = self.issue(name, &format!("IP:{sans_ip}"));
        let cert = self.dir.join(format!("{name}-expired.pem"));
        let script = format!(
            r#"
import datetime, ipaddress
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID, ExtendedKeyUsageOID
ca_key = serialization.load_pem_private_key(open({ca_key:?}, "rb").read(), None)
ca = x509.load_pem_x509_certificate(open({ca_cert:?}, "rb").read())
key = serialization.load_pem_private_key(open({key:?}, "rb").read(), None)
now = datetime.datetime.now(datetime.timezone.utc)
cert = (x509.CertificateBuilder()
    .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, {name:?})]))
    .issuer_name(ca.subject).public_key(key.public_key())
    .serial_number(x509.random_serial_number())
    .not_valid_before(now - datetime.timedelta(days=3))
    .not_valid_after(now - datetime.timedelta(days=1))
    .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address({sans_ip:?}))]), False)
    .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), False)
    .sign(ca_key, hashes.SHA256()))
open({out:?}, "wb").write(cert.public_bytes(serialization.Encoding.PEM))
"#,
            ca_key = self.key.display().to_string(),
            ca_cert = self.cert.display().to_string(),
            key = key.display().to_string(),
            out = cert.display().to_string(),
        );
        let status = std::process::Command::new(super::stack_env("PSYMATCH_PYTHON"))
            .args(["-c", &script])
            .status()
            .expect("the test helpers' python (scripts/install-tools)");
        assert!(status.success(), "signing an expired certificate");
        (cert, key)
    }
}

/// A self-signed end-entity certificate for 127.0.0.1 (as Proton Mail
/// Bridge presents on 127.0.0.1: its own trust anchor, not a CA; rustls
/// refuses a CA certificate presented by the server itself), in `dir`: its
/// certificate and key files (PEM).
pub fn self_signed(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    x509(
        dir,
        name,
        "/CN=127.0.0.1",
        &[
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "basicConstraints=critical,CA:FALSE",
            "extendedKeyUsage=serverAuth",
        ],
    );
    (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    )
}

/// A self-signed certificate `<name>.pem` with key `<name>.key` in `dir`,
/// valid for two days, with `extensions`.
fn x509(dir: &Path, name: &str, subject: &str, extensions: &[&str]) {
    let (cert, key) = (format!("{name}.pem"), format!("{name}.key"));
    let mut args = vec![
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", subject,
    ];
    for extension in extensions {
        args.extend(["-addext", extension]);
    }
    args.extend(["-keyout", &key, "-out", &cert]);
    openssl(&args, dir);
}
