//! Rendering the configuration file with tera before it is parsed, Helm-style: `env()`
//! reads environment variables and `values` / `Values` hold the `--values` file.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::ConfigError;

/// Renders the configuration file at `path` with tera, filling in environment variables
/// (`{{ env(name="KAFKA_BROKERS", default="localhost:9092") }}`) and the YAML values file
/// `values`, if any, as `values` and `Values` (`{{ values.kafka.brokers }}`).
pub fn render(path: &Path, values: Option<&Path>) -> Result<String, ConfigError> {
    let template = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.into(),
        source,
    })?;
    let values = match values {
        Some(file) => read_values(file)?,
        None => serde_json::Value::Object(Default::default()),
    };
    render_str(path, &template, &values)
}

/// Reads a values file: YAML, a mapping (an empty file counts as an empty one).
fn read_values(file: &Path) -> Result<serde_json::Value, ConfigError> {
    let fail = |detail: String| ConfigError::Values {
        path: file.into(),
        detail,
    };
    let text = std::fs::read_to_string(file).map_err(|e| fail(format!("cannot read: {e}")))?;
    let yaml: serde_yaml::Value =
        serde_yaml::from_str(&text).map_err(|e| fail(format!("not valid YAML: {e}")))?;
    let json = match yaml {
        serde_yaml::Value::Null => serde_json::Value::Object(Default::default()),
        yaml @ serde_yaml::Value::Mapping(_) => serde_json::to_value(&yaml)
            .map_err(|e| fail(format!("cannot be used as template values: {e}")))?,
        _ => return Err(fail("must be a YAML mapping (key: value lines)".into())),
    };
    Ok(json)
}

fn render_str(
    path: &Path,
    template: &str,
    values: &serde_json::Value,
) -> Result<String, ConfigError> {
    let name = path.display().to_string();
    let template_error = |e: tera::Error| ConfigError::Template {
        path: path.into(),
        detail: with_hint(describe(&e), template),
    };
    let mut tera = tera::Tera::default();
    // A YAML file: never HTML-escape, whatever the file is called.
    tera.autoescape_on(vec![]);
    // The variable env() could not find, so the error can name it (tera's own message
    // only says that the function failed).
    let unset: Arc<Mutex<Option<String>>> = Arc::default();
    let unset_in_fn = unset.clone();
    tera.register_function("env", move |args: &HashMap<String, tera::Value>| {
        env_function(args, &unset_in_fn)
    });
    tera.add_raw_template(&name, template)
        .map_err(template_error)?;
    let mut context = tera::Context::new();
    context.insert("values", values);
    context.insert("Values", values);
    tera.render(&name, &context).map_err(|e| {
        let unset = unset.lock().unwrap_or_else(|e| e.into_inner()).take();
        match unset {
            Some(var) => ConfigError::EnvUnset {
                path: path.into(),
                line: env_call_line(template, &var),
                name: var,
            },
            None => template_error(e),
        }
    })
}

/// `env(name="X", default="y")`: the variable's value, else the default, else an error.
fn env_function(
    args: &HashMap<String, tera::Value>,
    unset: &Mutex<Option<String>>,
) -> tera::Result<tera::Value> {
    if let Some(other) = args.keys().find(|k| *k != "name" && *k != "default") {
        return Err(tera::Error::msg(format!(
            "env() takes `name` and `default`, not `{other}`"
        )));
    }
    let Some(name) = args.get("name") else {
        return Err(tera::Error::msg(
            "env() needs the variable's name: env(name=\"VAR\")",
        ));
    };
    let Some(name) = name.as_str() else {
        return Err(tera::Error::msg(format!(
            "env(name=…) must be a string, not {name}"
        )));
    };
    match std::env::var(name) {
        Ok(value) => Ok(tera::Value::String(value)),
        Err(std::env::VarError::NotUnicode(_)) => Err(tera::Error::msg(format!(
            "environment variable {name} is not valid UTF-8"
        ))),
        Err(std::env::VarError::NotPresent) => match args.get("default") {
            Some(tera::Value::String(s)) => Ok(tera::Value::String(s.clone())),
            Some(other) => Ok(tera::Value::String(other.to_string())),
            None => {
                *unset.lock().unwrap_or_else(|e| e.into_inner()) = Some(name.into());
                Err(tera::Error::msg(format!(
                    "environment variable {name} is not set"
                )))
            }
        },
    }
}

/// The 1-based line of the template that calls env() for `var`, if one plainly does.
fn env_call_line(template: &str, var: &str) -> Option<usize> {
    let quoted = [format!("\"{var}\""), format!("'{var}'")];
    template
        .lines()
        .position(|l| l.contains("env(") && quoted.iter().any(|q| l.contains(q.as_str())))
        .map(|i| i + 1)
}

/// A tera error in one line. Its causes hold the detail; a syntax error's is pest's
/// report (` --> 3:7`, the source line, `= expected …`), said here as "syntax error at
/// line 3, column 7: expected …".
fn describe(e: &tera::Error) -> String {
    let mut messages = vec![e.to_string()];
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        messages.push(s.to_string());
        source = s.source();
    }
    let mut parts = Vec::new();
    for m in &messages {
        if let Some(syntax) = syntax_error(m) {
            parts.push(syntax);
        } else if !m.starts_with("Failed to parse '") && !m.starts_with("Failed to render '") {
            // tera's outer messages only repeat the template's name.
            parts.push(m.trim().to_string());
        }
    }
    if parts.is_empty() {
        messages.join(": ")
    } else {
        parts.join(": ")
    }
}

/// Adds the line, and what to do, to "Variable `x.y` not found…" (tera gives no line for
/// errors while rendering).
fn with_hint(detail: String, template: &str) -> String {
    let Some(var) = detail
        .strip_prefix("Variable `")
        .and_then(|rest| rest.split_once('`'))
        .map(|(var, _)| var)
    else {
        return detail;
    };
    let line = template
        .lines()
        .position(|l| l.contains(var) && (l.contains("{{") || l.contains("{%")))
        .map(|i| format!(" (line {})", i + 1))
        .unwrap_or_default();
    let hint = if var.starts_with("values.") || var.starts_with("Values.") {
        "; set it in the --values file, or give a default: "
    } else {
        "; give a default: "
    };
    format!("{detail}{line}{hint}{{{{ {var} | default(value=\"…\") }}}}")
}

/// pest's multi-line report as one line, if `message` is one.
fn syntax_error(message: &str) -> Option<String> {
    let (_, after) = message.split_once("--> ")?;
    let position = after.lines().next()?.trim();
    let (line, column) = position.split_once(':')?;
    let expected: Vec<&str> = message
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("= "))
        .collect();
    Some(format!(
        "syntax error at line {line}, column {column}: {}",
        expected.join("; ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render_text(template: &str, values: serde_json::Value) -> Result<String, ConfigError> {
        render_str(Path::new("weir.yaml"), template, &values)
    }

    #[test]
    fn env_with_default_and_values() {
        let values = serde_json::json!({"kafka": {"brokers": "k:9092"}});
        let out = render_text(
            "a: {{ env(name=\"WEIR_TEST_SURELY_UNSET\", default=\"d\") }}\n\
             b: {{ values.kafka.brokers }}\n\
             c: {{ Values.kafka.brokers }}\n\
             d: {{ values.nope.deeper | default(value=\"fallback\") }}\n\
             e: {{ env(name=\"WEIR_TEST_SURELY_UNSET\", default=5) }}\n",
            values,
        )
        .unwrap();
        assert_eq!(out, "a: d\nb: k:9092\nc: k:9092\nd: fallback\ne: 5\n");
    }

    #[test]
    fn unset_env_names_the_variable_and_line() {
        let err = render_text(
            "a: 1\nb: {{ env(name=\"WEIR_TEST_SURELY_UNSET\") }}\n",
            serde_json::json!({}),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with(
                "weir.yaml: environment variable WEIR_TEST_SURELY_UNSET is not set (line 2)"
            ),
            "{err}"
        );
    }

    #[test]
    fn syntax_errors_carry_tera_line_info() {
        let err = render_text("a: 1\nb: {{ 1 + }}\nc: 2\n", serde_json::json!({}))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("weir.yaml: template: syntax error at line 2, column "),
            "{err}"
        );
        let err = render_text("a: {{ values.nope }}\n", serde_json::json!({}))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("weir.yaml: template: Variable `values.nope` not found"),
            "{err}"
        );
        assert!(
            err.ends_with(
                " (line 1); set it in the --values file, or give a default: {{ values.nope | default(value=\"…\") }}"
            ),
            "{err}"
        );
    }
}
