//! Validating `--json` output against docs/schemas/ with python3's
//! `jsonschema` (Debian's python3-jsonschema; scripts/test.sh installs it):
//! an implementation of JSON Schema draft 2020-12 that stagehand does not
//! share. A test collects its cases ([`Schemas::check`]) and validates them
//! all in one python3 run ([`Schemas::finish`]), which panics naming every
//! case that failed, with the document and the validator's reasons.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use super::demo::repo_root;
use super::host::skip_unless_ci;
use super::run::Run;

/// docs/schemas/ in this checkout.
pub fn schema_dir() -> PathBuf {
    repo_root().join("docs/schemas")
}

/// The validator. Reads `{"dir", "mode", "cases": [{label, schema, instance}]}`
/// on stdin, prints `[{index, errors: [..]}]` for the failures. Schemas have
/// no `$id`: each is known by its file URI, so a relative `$ref`
/// (`common.schema.json#/$defs/digest`) resolves beside it, as an editor
/// resolves it. Works with jsonschema 4.10 (Debian 12: `RefResolver`) and
/// with later releases (`referencing`).
const VALIDATOR: &str = r#"
import json, pathlib, sys, warnings
warnings.simplefilter("ignore")
from jsonschema import Draft202012Validator as V
from jsonschema.exceptions import best_match
req = json.load(sys.stdin)
d = pathlib.Path(req["dir"]).resolve()
schemas = {p.name: json.loads(p.read_text()) for p in sorted(d.glob("*.schema.json"))}
uri = lambda name: (d / name).as_uri()
try:
    from referencing import Registry
    from referencing.jsonschema import DRAFT202012
    registry = Registry().with_resources([(uri(n), DRAFT202012.create_resource(s)) for n, s in schemas.items()])
    def validator(name):
        return V({"$ref": uri(name)}, registry=registry)
except ImportError:
    from jsonschema import RefResolver
    store = {uri(n): s for n, s in schemas.items()}
    def validator(name):
        return V(schemas[name], resolver=RefResolver(base_uri=uri(name), referrer=schemas[name], store=store))
failures = []
for i, case in enumerate(req["cases"]):
    name = case["schema"] + ".schema.json"
    try:
        if req["mode"] == "metaschema":
            V.check_schema(schemas[name])
            continue
        errors = list(validator(name).iter_errors(case["instance"]))
    except Exception as e:
        failures.append({"index": i, "errors": [f"{type(e).__name__}: {e}"[:2000]]})
        continue
    if errors:
        best = best_match(errors)
        errors = [best] + [e for e in errors if e is not best]
        failures.append({"index": i, "errors": [
            ("at /" + "/".join(str(p) for p in e.absolute_path) + ": " + e.message)[:1000] for e in errors[:10]]})
print(json.dumps(failures))
"#;

/// True if python3 can import jsonschema; otherwise skips loudly (fails in CI).
pub fn validator_or_skip(test: &str) -> bool {
    let ok = Command::new("python3")
        .args(["-c", "from jsonschema import Draft202012Validator"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        skip_unless_ci(test, "python3 with jsonschema >= 4 is not installed (Debian: python3-jsonschema)");
    }
    ok
}

struct Case {
    label: String,
    schema: String,
    instance: serde_json::Value,
}

/// The cases one test validates, in one python3 run.
#[derive(Default)]
pub struct Schemas {
    cases: Vec<Case>,
}

impl Schemas {
    pub fn new() -> Schemas {
        Schemas::default()
    }

    /// `value` must match docs/schemas/`schema`.schema.json.
    pub fn check(&mut self, schema: &str, label: &str, value: &serde_json::Value) {
        self.cases.push(Case { label: label.to_string(), schema: schema.to_string(), instance: value.clone() });
    }

    /// A run's stdout must be JSON matching `schema`; returns it.
    #[track_caller]
    pub fn check_run(&mut self, schema: &str, run: &Run) -> serde_json::Value {
        let v = run.json();
        self.check(schema, &format!("`stagehand {}` (exit {:?})", run.argv, run.code), &v);
        v
    }

    /// A failed run: stdout must be the error object (error.schema.json),
    /// and its `exit_code` the process's exit code.
    #[track_caller]
    pub fn check_error(&mut self, run: &Run) -> serde_json::Value {
        assert!(!run.success(), "expected a failure:\n{}", run.describe());
        let v = self.check_run("error", run);
        assert_eq!(
            v["exit_code"].as_i64(),
            run.code.map(i64::from),
            "exit_code is not the exit code:\n{}",
            run.describe()
        );
        v
    }

    /// How many cases were collected.
    pub fn len(&self) -> usize {
        self.cases.len()
    }

    /// Validates every case; panics listing each failure.
    #[track_caller]
    pub fn finish(self) {
        let failures = run_validator("instances", &self.cases);
        if failures.is_empty() {
            return;
        }
        let mut msg = format!("{} of {} documents do not match their schema:\n", failures.len(), self.cases.len());
        for (i, errors) in &failures {
            let c = &self.cases[*i];
            msg.push_str(&format!("\n== {} against {}.schema.json\n", c.label, c.schema));
            for e in errors {
                msg.push_str(&format!("   {e}\n"));
            }
            let doc = serde_json::to_string_pretty(&c.instance).unwrap_or_default();
            msg.push_str(&format!("   document: {}\n", doc.chars().take(3000).collect::<String>()));
        }
        panic!("{msg}");
    }

    /// The validator's verdict for each case, without panicking: the labels
    /// that failed, with their reasons.
    pub fn failures(&self) -> Vec<(String, Vec<String>)> {
        run_validator("instances", &self.cases).into_iter().map(|(i, e)| (self.cases[i].label.clone(), e)).collect()
    }
}

/// Checks every named schema against the draft 2020-12 metaschema; returns
/// (schema, reasons) for each that is not a valid schema.
pub fn metaschema_failures(names: &[String]) -> Vec<(String, Vec<String>)> {
    let cases: Vec<Case> =
        names.iter().map(|n| Case { label: n.clone(), schema: n.clone(), instance: serde_json::Value::Null }).collect();
    run_validator("metaschema", &cases).into_iter().map(|(i, e)| (names[i].clone(), e)).collect()
}

/// Runs the validator over `cases`; returns (index of the case, reasons) for each failure.
fn run_validator(mode: &str, cases: &[Case]) -> Vec<(usize, Vec<String>)> {
    let req = serde_json::json!({
        "dir": schema_dir(),
        "mode": mode,
        "cases": cases.iter().map(|c| serde_json::json!({
            "label": c.label, "schema": c.schema, "instance": c.instance,
        })).collect::<Vec<_>>(),
    });
    let mut child = Command::new("python3")
        .args(["-c", VALIDATOR])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn python3: {e}"));
    let body = serde_json::to_vec(&req).expect("serialise the cases");
    child.stdin.take().expect("stdin").write_all(&body).expect("write to python3");
    let out = child.wait_with_output().expect("wait for python3");
    assert!(out.status.success(), "the validator failed ({}):\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    let failures: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("the validator's output is not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout))
    });
    failures
        .iter()
        .map(|f| {
            let index = f["index"].as_u64().and_then(|i| usize::try_from(i).ok()).expect("a failure's index");
            let errors =
                f["errors"].as_array().map(|a| a.iter().map(|e| e.as_str().unwrap_or_default().to_string()).collect());
            (index, errors.unwrap_or_default())
        })
        .collect()
}
