//! deploy/kubernetes, checked here without a cluster: both overlays render
//! (kustomize), every object validates against the Kubernetes schemas
//! offline (kubernetes-validate, strict), and every Deployment agrees with
//! the code: its binary is one the Dockerfile builds, the processor accepts
//! its environment and reads every variable it sets (the binary itself is
//! asked, `PSYMATCH_CHECK_SETTINGS=1`), its probes are the surface's, its
//! files are ones the image holds, it runs as non-root on a read-only root
//! filesystem with requests and limits, and it has a Service, a
//! PodDisruptionBudget, a NetworkPolicy and (for a consumer scaled on lag:
//! not the matcher, whose one active replica has a standby) a ScaledObject
//! on its own consumer group; every processor of docker-compose.yml has
//! its Deployment.

use psymatch_proof::processes;
use serde::Deserialize;
use serde_yaml_ng::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn tools() -> PathBuf {
    std::env::var_os("PSYMATCH_TOOLS")
        .map_or_else(|| "/var/tmp/psymatch-tools".into(), PathBuf::from)
}

/// The objects of an overlay, rendered by kustomize.
fn render(overlay: &str) -> Vec<Value> {
    let output = Command::new(tools().join("bin/kustomize"))
        .arg("build")
        .arg(root().join("deploy/kubernetes/overlays").join(overlay))
        .output()
        .expect("kustomize (scripts/install-tools installs it)");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|document| Value::deserialize(document).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

fn named<'a>(objects: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    of_kind(objects, kind)
        .into_iter()
        .find(|o| o["metadata"]["name"] == name)
}

/// The image's files as the Dockerfile copies them: image path -> repository path.
fn image_files() -> BTreeMap<String, PathBuf> {
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    dockerfile
        .lines()
        .filter_map(|line| line.strip_prefix("COPY "))
        .filter(|rest| !rest.starts_with("--from"))
        .filter_map(|rest| {
            let (from, to) = rest.split_once(' ')?;
            Some((to.trim().to_string(), root().join(from)))
        })
        .collect()
}

/// `path` of the image in the repository, when the Dockerfile puts it there.
fn in_repository(path: &str) -> Option<PathBuf> {
    image_files().into_iter().find_map(|(image, repo)| {
        let rest = path.strip_prefix(&image)?.trim_start_matches('/');
        Some(if rest.is_empty() {
            repo
        } else {
            repo.join(rest)
        })
    })
}

/// A Deployment's environment, its references resolved from the rendered
/// ConfigMap and Secret (a Secret made by hand in production stands in as
/// `from-secret:<key>`).
fn environment(deployment: &Value, objects: &[Value]) -> Result<BTreeMap<String, String>, String> {
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let mut env = BTreeMap::new();
    for entry in container["env"].as_sequence().into_iter().flatten() {
        let name = entry["name"].as_str().unwrap().to_string();
        let value = if let Some(value) = entry["value"].as_str() {
            value.to_string()
        } else if entry["valueFrom"]["configMapKeyRef"].is_mapping() {
            let r = &entry["valueFrom"]["configMapKeyRef"];
            let (map, key) = (r["name"].as_str().unwrap(), r["key"].as_str().unwrap());
            named(objects, "ConfigMap", map)
                .and_then(|m| m["data"][key].as_str())
                .ok_or(format!("{name}: ConfigMap {map} has no key {key}"))?
                .to_string()
        } else if entry["valueFrom"]["secretKeyRef"].is_mapping() {
            let r = &entry["valueFrom"]["secretKeyRef"];
            let (secret, key) = (r["name"].as_str().unwrap(), r["key"].as_str().unwrap());
            match named(objects, "Secret", secret) {
                Some(s) => {
                    let encoded = s["data"][key]
                        .as_str()
                        .ok_or(format!("{name}: Secret {secret} has no key {key}"))?;
                    use base64::Engine;
                    // Long values come folded over lines.
                    let encoded: String = encoded.split_whitespace().collect();
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(encoded)
                        .unwrap();
                    String::from_utf8(bytes).unwrap()
                }
                None => format!("from-secret:{key}"),
            }
        } else {
            return Err(format!("{name}: neither a value nor a reference"));
        };
        env.insert(name, value);
    }
    Ok(env)
}

/// The Secret volumes a Deployment mounts, written as files under `dir`
/// (values from the rendered Secret, or `from-secret:<key>` for one made by
/// hand): mount path -> the directory standing in for it. Each pod must
/// see only its own Kafka password: a `kafka` volume holds exactly the key
/// of the principal `KAFKA_SASL_USERNAME` names, and the brokers' CA.
fn secret_files(
    deployment: &Value,
    objects: &[Value],
    dir: &Path,
) -> Result<BTreeMap<String, PathBuf>, String> {
    let spec = &deployment["spec"]["template"]["spec"];
    let container = &spec["containers"][0];
    let mut mounts = BTreeMap::new();
    for mount in container["volumeMounts"]
        .as_sequence()
        .into_iter()
        .flatten()
    {
        let volume_name = mount["name"].as_str().unwrap();
        let volume = spec["volumes"]
            .as_sequence()
            .into_iter()
            .flatten()
            .find(|v| v["name"] == volume_name)
            .ok_or(format!("volume {volume_name} is mounted but not declared"))?;
        let Some(secret) = volume["secret"]["secretName"].as_str() else {
            continue;
        };
        let target = dir.join(volume_name);
        std::fs::create_dir_all(&target).unwrap();
        let items: Vec<(String, String)> = volume["secret"]["items"]
            .as_sequence()
            .ok_or(format!(
                "volume {volume_name}: name the keys it mounts (items)"
            ))?
            .iter()
            .map(|i| {
                (
                    i["key"].as_str().unwrap().to_string(),
                    i["path"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        if volume_name == "kafka" {
            let principal = container["env"]
                .as_sequence()
                .into_iter()
                .flatten()
                .find(|e| e["name"] == "KAFKA_SASL_USERNAME")
                .and_then(|e| e["value"].as_str())
                .ok_or("a kafka volume without KAFKA_SASL_USERNAME")?;
            let keys: BTreeSet<&str> = items.iter().map(|(k, _)| k.as_str()).collect();
            let own = format!("{principal}-password");
            if keys != BTreeSet::from([own.as_str(), "ca.pem"]) {
                return Err(format!(
                    "the kafka volume mounts {keys:?}, not exactly {own} and ca.pem"
                ));
            }
        }
        for (key, path) in items {
            let value = named(objects, "Secret", secret)
                .and_then(|s| s["data"][key.as_str()].as_str())
                .map(|encoded| {
                    use base64::Engine;
                    let encoded: String = encoded.split_whitespace().collect();
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(encoded)
                        .unwrap();
                    String::from_utf8(bytes).unwrap()
                })
                .unwrap_or(format!("from-secret:{key}\n"));
            std::fs::write(target.join(path), value).unwrap();
        }
        mounts.insert(mount["mountPath"].as_str().unwrap().to_string(), target);
    }
    Ok(mounts)
}

/// Asks the processor's binary whether it accepts `env` (and nothing
/// else), the Secret files it names at `mounts`' stand-ins: the settings
/// it read, or its message.
fn accepted(
    binary: &Path,
    env: &BTreeMap<String, String>,
    mounts: &BTreeMap<String, PathBuf>,
) -> Result<BTreeSet<String>, String> {
    let mut command = Command::new(binary);
    command
        .env_clear()
        .env("PSYMATCH_CHECK_SETTINGS", "1")
        .env("RUST_LOG", "error");
    for (name, value) in env {
        // Files the image holds are checked in the repository; a Secret's
        // files at their stand-ins.
        let value = in_repository(value).map_or(value.clone(), |p| p.display().to_string());
        let value = mounts
            .iter()
            .find_map(|(at, dir)| {
                value
                    .strip_prefix(at.as_str())
                    .map(|rest| format!("{}{rest}", dir.display()))
            })
            .unwrap_or(value);
        command.env(name, value);
    }
    let output = command.output().unwrap();
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    let line = String::from_utf8_lossy(&output.stdout);
    let answer: serde_json::Value =
        serde_json::from_str(line.trim()).map_err(|e| format!("{e}: {line}"))?;
    Ok(answer["read"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect())
}

/// What is wrong with one Deployment, as sentences naming the thing.
fn problems(deployment: &Value, objects: &[Value]) -> Vec<String> {
    let mut found = Vec::new();
    let name = deployment["metadata"]["name"].as_str().unwrap();
    let spec = &deployment["spec"]["template"]["spec"];
    let container = &spec["containers"][0];
    let image = container["image"].as_str().unwrap_or("");
    if !(image.starts_with("psymatch:") || image.contains("/psymatch:")) {
        found.push(format!(
            "{name}: image {image} is not the Dockerfile's psymatch image"
        ));
    }
    let command = container["command"][0].as_str().unwrap_or("");
    let binary = command.trim_start_matches("/usr/local/bin/");
    let proofs = [
        "psymatch-proof",
        "psymatch-matcher-chain-bench",
        "psymatch-query-bench",
        "psymatch-replay-bench",
    ];
    let path = processes::binary(binary).unwrap();
    if !command.starts_with("/usr/local/bin/psymatch-")
        || proofs.contains(&binary)
        || !path.exists()
    {
        found.push(format!(
            "{name}: command {command} is no binary the Dockerfile builds"
        ));
    }
    match environment(deployment, objects) {
        Err(e) => found.push(format!("{name}: {e}")),
        Ok(env) => {
            for (var, value) in &env {
                if value.starts_with("/etc/psymatch/")
                    && in_repository(value).is_none_or(|p| !p.exists())
                {
                    found.push(format!("{name}: {var}={value} is not in the image"));
                }
            }
            let dir = psymatch_runtime::testing::scratch_dir("kubernetes-secrets");
            let mounts = match secret_files(deployment, objects, &dir) {
                Ok(mounts) => mounts,
                Err(e) => {
                    found.push(format!("{name}: {e}"));
                    BTreeMap::new()
                }
            };
            match accepted(&path, &env, &mounts) {
                Err(message) => found.push(format!(
                    "{name}: {binary} refuses its environment: {message}"
                )),
                Ok(read) => {
                    for var in env.keys().filter(|v| !read.contains(*v)) {
                        found.push(format!("{name}: sets {var}, which {binary} never reads"));
                    }
                }
            }
            let port = env
                .get("HTTP_LISTEN")
                .and_then(|l| l.rsplit(':').next())
                .unwrap_or("");
            if container["ports"][0]["containerPort"]
                .as_u64()
                .map(|p| p.to_string())
                .as_deref()
                != Some(port)
            {
                found.push(format!(
                    "{name}: the surface port is not HTTP_LISTEN's ({port})"
                ));
            }
        }
    }
    // The probes' paths are routes of the runtime's surface, which every
    // processor serves on HTTP_LISTEN.
    let surface =
        std::fs::read_to_string(root().join("processors/runtime/src/surface.rs")).unwrap();
    for (probe, path) in [
        ("livenessProbe", "/health/liveness"),
        ("readinessProbe", "/health/readiness"),
    ] {
        let get = &container[probe]["httpGet"];
        let served = surface.contains(&format!(".route(\"{path}\""));
        if get["path"] != path || get["port"] != "surface" || !served {
            found.push(format!("{name}: {probe} is not {path} on the surface port"));
        }
    }
    let security = &container["securityContext"];
    if spec["securityContext"]["runAsNonRoot"] != true
        || security["readOnlyRootFilesystem"] != true
        || security["allowPrivilegeEscalation"] != false
    {
        found.push(format!(
            "{name}: not non-root on a read-only root filesystem"
        ));
    }
    let resources = &container["resources"];
    if resources["requests"]["cpu"].is_null()
        || resources["requests"]["memory"].is_null()
        || resources["limits"]["memory"].is_null()
    {
        found.push(format!("{name}: requests or limits missing"));
    }
    for kind in ["Service", "PodDisruptionBudget", "NetworkPolicy"] {
        if named(objects, kind, name).is_none() {
            found.push(format!("{name}: no {kind}"));
        }
    }
    let schema = binary.trim_start_matches("psymatch-").replace('-', "_");
    if let Some(scaled) = named(objects, "ScaledObject", name) {
        let trigger = &scaled["spec"]["triggers"][0]["metadata"];
        let topics = std::fs::read_to_string(root().join("topics.yaml")).unwrap();
        let topic = trigger["topic"].as_str().unwrap_or("");
        if scaled["spec"]["scaleTargetRef"]["name"] != name
            || trigger["consumerGroup"] != format!("psymatch-{schema}").as_str()
            || !topics.contains(&format!("- name: {topic}\n"))
            || scaled["spec"]["minReplicaCount"].as_u64()
                > scaled["spec"]["maxReplicaCount"].as_u64()
        {
            found.push(format!(
                "{name}: its ScaledObject does not scale it on its own group's lag"
            ));
        }
    }
    found
}

#[test]
fn both_overlays_render_and_validate_against_the_kubernetes_schemas() {
    for overlay in ["local", "production"] {
        let objects = render(overlay);
        assert!(of_kind(&objects, "Deployment").len() >= 6, "{overlay}");
        let file =
            std::env::temp_dir().join(format!("psymatch-{overlay}-{}.yaml", std::process::id()));
        let text: Vec<String> = objects
            .iter()
            .map(|o| serde_yaml_ng::to_string(o).unwrap())
            .collect();
        std::fs::write(&file, text.join("---\n")).unwrap();
        let output = Command::new(tools().join("venv/bin/kubernetes-validate"))
            .args(["--strict", "--quiet"])
            .arg(&file)
            .output()
            .expect("kubernetes-validate (scripts/install-tools installs it)");
        let said = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{overlay}: {said}");
        // Only the KEDA objects have no schema here; test above checks them.
        for line in said.lines().filter(|l| l.contains("WARN")) {
            assert!(line.contains("kind ScaledObject"), "{overlay}: {line}");
        }
        std::fs::remove_file(&file).unwrap();
    }
}

#[test]
fn every_deployment_agrees_with_its_processor() {
    let local_secret = named(&render("local"), "Secret", "psymatch-secrets")
        .unwrap()
        .clone();
    let guide = std::fs::read_to_string(root().join("docs/operations.md")).unwrap();
    for overlay in ["local", "production"] {
        let mut objects = render(overlay);
        if named(&objects, "Secret", "psymatch-secrets").is_none() {
            // Made by hand in production (docs/operations.md), with the
            // keys of the local one: those stand in.
            objects.push(local_secret.clone());
        }
        let deployments = of_kind(&objects, "Deployment");
        // Every secret key a Deployment takes is one the guide's
        // `kubectl create secret` names.
        let text = serde_yaml_ng::to_string(&objects).unwrap();
        for key in text
            .split("secretKeyRef:")
            .skip(1)
            .filter_map(|r| r.split("key: ").nth(1))
        {
            let key = key.lines().next().unwrap().trim();
            let named_in_guide = guide.contains(&format!("{key}="))
                || guide.contains(key.trim_end_matches("-database-url"));
            assert!(
                named_in_guide,
                "{overlay}: the secret key {key} is not in docs/operations.md"
            );
        }
        // So is every key a volume mounts from a Secret.
        for key in text.split("secretName: ").skip(1).flat_map(|r| {
            r.split("- key: ")
                .skip(1)
                .map(|k| k.lines().next().unwrap().trim())
        }) {
            assert!(
                guide.contains(&format!("{key}=")),
                "{overlay}: the secret key {key} is not in docs/operations.md"
            );
        }
        let found: Vec<String> = deployments
            .iter()
            .flat_map(|d| problems(d, &objects))
            .collect();
        assert!(found.is_empty(), "{overlay}:\n{}", found.join("\n"));
        // Every processor of docker-compose.yml runs here too.
        let compose = std::fs::read_to_string(root().join("docker-compose.yml")).unwrap();
        let commands: BTreeSet<String> = deployments
            .iter()
            .map(|d| {
                d["spec"]["template"]["spec"]["containers"][0]["command"][0]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        for line in compose
            .lines()
            .filter(|l| l.contains("entrypoint: [\"/usr/local/bin/psymatch-"))
        {
            let binary = line.split('"').nth(1).unwrap();
            assert!(
                commands.contains(binary),
                "{overlay}: no Deployment runs {binary}"
            );
        }
    }
}

#[test]
fn a_setting_no_processor_reads_or_one_it_refuses_fails_with_its_name() {
    let objects = render("local");
    let matcher = named(&objects, "Deployment", "matcher").unwrap().clone();
    for (var, expected) in [
        ("MATCHER_COLOUR", "MATCHER_COLOUR"),
        (
            "NOTHING_READS_THIS",
            "sets NOTHING_READS_THIS, which psymatch-matcher never reads",
        ),
    ] {
        let mut changed = matcher.clone();
        let env = changed["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_sequence_mut()
            .unwrap();
        let entry: Value = serde_yaml_ng::from_str(&format!("{{name: {var}, value: x}}")).unwrap();
        env.push(entry);
        let found = problems(&changed, &objects).join("\n");
        assert!(found.contains(expected), "{var}: {found}");
    }
}

#[test]
fn an_unreadable_setting_stops_each_processor_before_it_touches_anything() {
    let cases = [
        ("psymatch-intake", "BATCH_SIZE", "lots"),
        ("psymatch-scraper", "KBV_RATE_PER_SECOND", "-1"),
        ("psymatch-geocoder", "NOMINATIM_RATE_PER_SECOND", "fast"),
        (
            "psymatch-matcher",
            "MATCHER_RULES",
            "/nonexistent/rules.yaml",
        ),
        ("psymatch-email-batcher", "SMTP_PORT", "twenty-five"),
        ("psymatch-scheduler", "SCHEDULER_TICK_MS", "soon"),
    ];
    for (binary, var, value) in cases {
        let output = Command::new(processes::binary(binary).unwrap())
            .env_clear()
            .env(var, value)
            // Nothing answers here: a message about these would mean the
            // processor got past its settings.
            .env("KAFKA_BROKERS", "127.0.0.1:1")
            .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
            .env(
                "SCHEDULE_FILE",
                root().join("processors/scheduler/schedule.yaml"),
            )
            .env(
                "TEMPLATES_DIR",
                root().join("processors/email-batcher/templates"),
            )
            .env("RUST_LOG", "error")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{binary} accepted {var}={value}");
        assert!(
            stderr.contains(var) || stderr.contains(value),
            "{binary}: {stderr}"
        );
        assert!(
            !stderr.contains("127.0.0.1:1"),
            "{binary} went on to connect: {stderr}"
        );
    }
}

/// `${NAME:-default}` and `${NAME:?message}` as compose resolves them
/// with nothing set: the default, or a stand-in for a required value.
fn compose_value(value: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').map(|e| start + e).unwrap();
        let inner = &rest[start + 2..end];
        out.push_str(match inner.split_once(":-") {
            Some((_, default)) => default,
            None => "postgres://stand-in@postgres:5432/psymatch?sslmode=verify-full",
        });
        rest = &rest[end + 1..];
    }
    out + rest
}

#[test]
fn the_secured_compose_override_gives_each_processor_its_own_principal_and_tls() {
    let read = |file: &str| -> Value {
        let mut value: Value =
            serde_yaml_ng::from_str(&std::fs::read_to_string(root().join(file)).unwrap()).unwrap();
        value.apply_merge().unwrap();
        value
    };
    let (base, secured) = (
        read("docker-compose.yml"),
        read("docker-compose.secured.yml"),
    );
    let secrets = secured["secrets"].as_mapping().unwrap();
    let dir = psymatch_runtime::testing::scratch_dir("compose-secrets");
    for (name, secret) in secrets {
        // Stand-ins for the files compose mounts at /run/secrets/<name>.
        let file = secret["file"].as_str().unwrap();
        assert!(file.starts_with("./secrets/"), "{file}");
        std::fs::write(dir.join(name.as_str().unwrap()), "from-a-file\n").unwrap();
    }
    let mounts = BTreeMap::from([("/run/secrets".to_string(), dir.clone())]);
    let mut checked = 0;
    for (service, spec) in base["services"].as_mapping().unwrap() {
        let Some(binary) = spec["entrypoint"][0]
            .as_str()
            .and_then(|e| e.strip_prefix("/usr/local/bin/"))
        else {
            continue;
        };
        let service = service.as_str().unwrap();
        let principal = binary.trim_start_matches("psymatch-").replace('-', "_");
        let over = &secured["services"][service];
        let mut env: BTreeMap<String, String> = BTreeMap::new();
        for layer in [&spec["environment"], &over["environment"]] {
            for (k, v) in layer.as_mapping().into_iter().flatten() {
                let value = v.as_str().map_or_else(|| format!("{v:?}"), compose_value);
                env.insert(k.as_str().unwrap().to_string(), value);
            }
        }
        assert_eq!(env["KAFKA_SECURITY_PROTOCOL"], "sasl_ssl", "{service}");
        assert_eq!(env["KAFKA_SASL_USERNAME"], principal, "{service}");
        let own = format!("{principal}-password");
        assert_eq!(
            env["KAFKA_SASL_PASSWORD_FILE"],
            format!("/run/secrets/{own}"),
            "{service}"
        );
        // Its own password and no other principal's.
        let mounted: BTreeSet<&str> = over["secrets"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap())
            .collect();
        assert_eq!(
            mounted,
            BTreeSet::from(["kafka-ca", "postgres-ca", own.as_str()]),
            "{service}"
        );
        assert!(
            env["DATABASE_URL"]
                .contains("sslmode=verify-full&sslrootcert=/run/secrets/postgres-ca"),
            "{service}: {}",
            env["DATABASE_URL"]
        );
        let path = processes::binary(binary).unwrap();
        if let Err(message) = accepted(&path, &env, &mounts) {
            panic!("{service}: {binary} refuses the secured environment: {message}");
        }
        checked += 1;
    }
    assert_eq!(checked, 6, "every processor of docker-compose.yml");
}
