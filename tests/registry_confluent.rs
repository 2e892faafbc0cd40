//! `weir registry` with a third-party client: Confluent's own Python client
//! (`confluent-kafka`) registers, fetches, looks up, checks and serializes through it, and
//! the messages it writes decode with apache-avro against the schema weir serves.
//!
//! The client lives in a Python virtual environment under the cargo target directory
//! (`target/pyenv`), created on first run with `pip install`. Without PyPI the test fails
//! and says so; it never skips. `WEIR_TEST_PYTHON` names the Python to create it with
//! (default `python3`).

use std::path::{Path, PathBuf};
use std::process::Command;

use apache_avro::Schema;
use apache_avro::reader::datum::GenericDatumReader;
use serde_json::Value;
use weir_tests::{Registry, TestDb};

/// What the virtual environment installs; a change here reinstalls it.
const REQUIREMENT: &str = "confluent-kafka[avro,schemaregistry]>=2.10";

/// The cargo target directory: this test runs from `target/<profile>/deps`.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| weir_tests::repo_root().join("target"))
}

/// The Python of a virtual environment with confluent-kafka, created if missing.
fn python_with_confluent_kafka() -> PathBuf {
    let venv = target_dir().join("pyenv");
    let python = venv.join("bin").join("python");
    let marker = venv.join(".weir-installed");
    if std::fs::read_to_string(&marker).ok().as_deref() == Some(REQUIREMENT) && python.exists() {
        return python;
    }
    let system = std::env::var("WEIR_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(&system)
        .args(["-m", "venv"])
        .arg(&venv)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {system} to create {}: {e}", venv.display()));
    assert!(
        out.status.success(),
        "{system} -m venv {} failed (is python3-venv installed?):\n{}",
        venv.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--quiet",
            REQUIREMENT,
        ])
        .output()
        .expect("run pip");
    assert!(
        out.status.success(),
        "pip could not install {REQUIREMENT} into {}: is PyPI reachable (proxy, network)? \
         This test needs Confluent's Python client and does not skip without it.\n{}{}",
        venv.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(&marker, REQUIREMENT).expect("write the venv marker");
    python
}

/// Hex digits to bytes.
fn unhex(text: &str) -> Vec<u8> {
    assert!(text.len().is_multiple_of(2), "odd hex: {text}");
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}

#[tokio::test]
async fn confluent_python_client_works_with_weir_registry() {
    let python = python_with_confluent_kafka();
    let db = TestDb::new();
    let registry = Registry::start(&db.url());
    let script = weir_tests::repo_root().join("tests/python/confluent_client.py");
    let out = Command::new(&python)
        .arg(&script)
        .args([registry.url.as_str(), "trades"])
        .output()
        .expect("run the Python client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the Confluent client failed against weir's registry:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(&stdout).expect("a JSON report");
    let schema_id = report["schema_id"].as_u64().expect("schema_id");

    let http = reqwest::Client::new();
    let subjects: Value = http
        .get(format!("{}/subjects", registry.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(subjects, report["subjects"]);

    let messages = report["messages"].as_object().expect("messages");
    assert_eq!(messages.len(), 3, "{messages:?}");
    for (how, hex) in messages {
        let bytes = unhex(hex.as_str().unwrap());
        assert!(bytes.len() > 5, "{how}: {bytes:?}");
        assert_eq!(bytes[0], 0, "{how}: magic byte");
        let id = u32::from_be_bytes(bytes[1..5].try_into().unwrap());
        assert_eq!(u64::from(id), schema_id, "{how}: schema id");
        // Decode with the schema weir serves for that id, as a consumer would.
        let served: Value = http
            .get(format!("{}/schemas/ids/{id}", registry.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let schema = Schema::parse_str(served["schema"].as_str().expect("schema")).unwrap();
        let mut body = &bytes[5..];
        let value = GenericDatumReader::builder(&schema)
            .build()
            .unwrap()
            .read_value(&mut body)
            .unwrap_or_else(|e| panic!("{how}: {e}"));
        assert!(body.is_empty(), "{how}: {} bytes left over", body.len());
        let decoded = Value::try_from(value).unwrap();
        assert_eq!(decoded, report["record"], "{how}");
    }
}
