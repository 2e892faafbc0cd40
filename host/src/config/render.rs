//! Rendering the configuration file with tera before it is parsed, Helm-style: `env()`
//! reads environment variables and `values` / `Values` hold the `--values` file.
//!
//! A template is one file and its rendering is bounded, so that a mistaken template fails
//! with a message instead of exhausting the stack, the memory or the time of `weir run`:
//!
//! - Before tera parses it, the text is scanned: blocks (`if`, `for`, `macro`, `filter`,
//!   `block`) may nest [`MAX_NESTING`] deep, brackets in one tag too, and one tag may chain
//!   [`MAX_OPERATORS`] operators (tera's parser and renderer recurse on each).
//! - Then the parsed template is checked: `{% include %}`, `{% extends %}` and
//!   `{% import %}` are refused (a file that includes itself would recurse without end),
//!   and so are a macro that calls itself, directly or through other macros, macros
//!   calling one another more than [`MAX_NESTING`] deep, a macro whose calls fan out to
//!   more than [`MAX_MACRO_CALLS`] (each call in its text counted once, as if every loop
//!   ran once), and a number literal no 64-bit float holds.
//! - `range()` is tera's (`start`, `end`, `step_by`), except that all the calls of one
//!   render together make at most [`MAX_RANGE_ITEMS`] numbers (so nested loops cannot
//!   multiply past it) and `step_by=0` is an error.
//! - The output may be at most [`MAX_OUTPUT_BYTES`], and rendering may take at most
//!   [`MAX_RENDER_TIME`]: both are checked as the output is written (the time also at
//!   each `range()` call). The text a macro or a `{% filter %}` section produces is
//!   counted when it is written out, not while tera builds it.
//!
//! Rendering runs on a thread of its own with a [`RENDER_STACK`] stack, and a panic in
//! tera is an error like any other.
//!
//! The `weir` commands render in a child process ([`render_isolated`]) whose memory
//! is capped at [`RENDER_MEMORY`] and which is killed past its time: what the checks above
//! cannot see coming (a variable doubled in a loop that writes nothing, say) fails there,
//! and the command says why instead of running out of memory or time itself.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tera::ast::{Expr, ExprVal, FunctionCall, MacroCall, Node};

use super::ConfigError;

/// The most text one render may produce: 16 MiB.
const MAX_OUTPUT_BYTES: usize = 16 << 20;
/// The longest one render may take.
const MAX_RENDER_TIME: Duration = Duration::from_secs(10);
/// The most numbers all `range()` calls of one render may make together.
const MAX_RANGE_ITEMS: usize = 1_000_000;
/// The most macro calls one call of a macro may lead to, counted in the template's text.
const MAX_MACRO_CALLS: u64 = 100_000;
/// How deep blocks, brackets in one tag, and macros calling macros may nest.
const MAX_NESTING: usize = 32;
/// The most operators (`+`, `and`, `==`, `~`…) one tag may hold.
const MAX_OPERATORS: usize = 256;
/// The stack of the rendering thread: room for the deepest nesting allowed.
const RENDER_STACK: usize = 64 << 20;

/// The memory of the child process a `weir` command renders in.
pub const RENDER_MEMORY: usize = 1 << 30;

/// The bounds of one render (the constants above, smaller in tests).
#[derive(Debug, Clone, Copy)]
struct Limits {
    output_bytes: usize,
    time: Duration,
    range_items: usize,
}

const LIMITS: Limits = Limits {
    output_bytes: MAX_OUTPUT_BYTES,
    time: MAX_RENDER_TIME,
    range_items: MAX_RANGE_ITEMS,
};

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

/// Renders the configuration file at `path` as [`render`] does, in a child process of the
/// `weir` binary `exe` (`weir config render-isolated`) capped at [`RENDER_MEMORY`] and
/// killed past the render time.
pub fn render_isolated(
    path: &Path,
    values: Option<&Path>,
    exe: &Path,
) -> Result<String, ConfigError> {
    use crate::isolate::Failure;
    let refused = |detail: String| ConfigError::Template {
        path: path.into(),
        detail,
    };
    let mut args = vec![
        "config".to_string(),
        "render-isolated".into(),
        "--config".into(),
        path.display().to_string(),
    ];
    if let Some(values) = values {
        args.extend(["--values".into(), values.display().to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // The child stops itself at the render time; this is for a child that cannot.
    let deadline = MAX_RENDER_TIME + Duration::from_secs(5);
    match crate::isolate::run(exe, &args, &[], deadline) {
        Ok(text) => String::from_utf8(text)
            .map_err(|e| refused(format!("the rendered text is not UTF-8: {e}"))),
        Err(Failure::Start(e)) => Err(refused(format!(
            "cannot start the rendering process {}: {e}",
            exe.display()
        ))),
        Err(Failure::TimedOut(limit)) => Err(refused(format!(
            "rendering takes longer than {}, the most a configuration template may take: is a loop running away?",
            humantime::format_duration(limit)
        ))),
        Err(f) if f.out_of_memory() => Err(refused(format!(
            "rendering needs more than {} of memory, the most a configuration template may take: does a loop build a value without end?",
            super::format_size(RENDER_MEMORY)
        ))),
        Err(Failure::Killed { signal, .. }) => Err(refused(format!(
            "the template engine crashed (signal {signal}): does the template nest too deep?"
        ))),
        // The child's own message, as `weir` prints an error.
        Err(Failure::Failed { stderr }) => Err(ConfigError::Isolated(
            stderr
                .lines()
                .rev()
                .find_map(|l| l.strip_prefix("error: "))
                .unwrap_or(&stderr)
                .to_string(),
        )),
    }
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
    render_bounded(path, template, values, LIMITS)
}

/// Renders on a thread of its own, with a stack for the deepest nesting allowed.
fn render_bounded(
    path: &Path,
    template: &str,
    values: &serde_json::Value,
    limits: Limits,
) -> Result<String, ConfigError> {
    let failed = |detail: String| ConfigError::Template {
        path: path.into(),
        detail,
    };
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("config-render".into())
            .stack_size(RENDER_STACK)
            .spawn_scoped(scope, || render_here(path, template, values, limits))
            .map_err(|e| failed(format!("cannot start rendering: {e}")))?
            .join()
            .map_err(|_| failed("the template engine failed (a panic, reported above)".into()))?
    })
}

fn render_here(
    path: &Path,
    template: &str,
    values: &serde_json::Value,
    limits: Limits,
) -> Result<String, ConfigError> {
    let name = path.display().to_string();
    let template_error = |e: tera::Error| ConfigError::Template {
        path: path.into(),
        detail: with_hint(describe(&e), template),
    };
    let refused = |detail: String| ConfigError::Template {
        path: path.into(),
        detail,
    };
    check_nesting(template).map_err(refused)?;
    // Checked before tera sees it, so that an `extends` or `import` is refused as such
    // rather than reported as a missing template.
    let parsed = tera::Template::new(&name, None, template).map_err(template_error)?;
    check_template(&parsed, template).map_err(refused)?;

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
    let budget = Arc::new(Budget::new(limits));
    let budget_in_fn = budget.clone();
    tera.register_function("range", move |args: &HashMap<String, tera::Value>| {
        range_function(args, &budget_in_fn)
    });
    tera.add_raw_template(&name, template)
        .map_err(template_error)?;
    let mut context = tera::Context::new();
    context.insert("values", values);
    context.insert("Values", values);
    let mut out = BoundedWriter {
        text: Vec::new(),
        budget: &budget,
    };
    let rendered = tera.render_to(&name, &context, &mut out);
    if let Some(exceeded) = budget.exceeded() {
        return Err(refused(exceeded));
    }
    rendered.map_err(|e| {
        let unset = unset.lock().unwrap_or_else(|e| e.into_inner()).take();
        match unset {
            Some(var) => ConfigError::EnvUnset {
                path: path.into(),
                line: env_call_line(template, &var),
                name: var,
            },
            None => template_error(e),
        }
    })?;
    // tera writes only strings.
    String::from_utf8(out.text).map_err(|e| refused(format!("the output is not UTF-8: {e}")))
}

/// What one render has used of its [`Limits`], shared by the output and `range()`.
struct Budget {
    limits: Limits,
    deadline: Instant,
    range_items: AtomicUsize,
    /// The first bound passed, said for the user.
    exceeded: Mutex<Option<String>>,
}

impl Budget {
    fn new(limits: Limits) -> Self {
        Self {
            limits,
            deadline: Instant::now() + limits.time,
            range_items: AtomicUsize::new(0),
            exceeded: Mutex::new(None),
        }
    }

    fn exceed(&self, what: String) -> String {
        let mut exceeded = self.exceeded.lock().unwrap_or_else(|e| e.into_inner());
        exceeded.get_or_insert(what).clone()
    }

    fn exceeded(&self) -> Option<String> {
        self.exceeded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// An error once the time is up.
    fn check_time(&self) -> Result<(), String> {
        if Instant::now() <= self.deadline {
            return Ok(());
        }
        Err(self.exceed(format!(
            "rendering takes longer than {}, the most a configuration template may take: is a loop running away?",
            humantime::format_duration(self.limits.time)
        )))
    }

    /// Takes `n` numbers for a `range()` call, or says why not.
    fn take_range_items(&self, n: usize) -> Result<(), String> {
        let before = self.range_items.fetch_add(n, Ordering::Relaxed);
        if before.saturating_add(n) <= self.limits.range_items {
            return Ok(());
        }
        let so_far = match before {
            0 => String::new(),
            b => format!(" after {b} made by earlier calls"),
        };
        Err(self.exceed(format!(
            "range() would make {n} numbers{so_far}, past the {} all range() calls of one render may make together",
            self.limits.range_items
        )))
    }
}

/// The rendered text, refusing to grow past the budget's size or time.
struct BoundedWriter<'b> {
    text: Vec<u8>,
    budget: &'b Budget,
}

impl Write for BoundedWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let limit = self.budget.limits.output_bytes;
        if self.text.len().saturating_add(buf.len()) > limit {
            return Err(io::Error::other(self.budget.exceed(format!(
                "the rendered text passes {}, the most a configuration template may produce: is a loop running away?",
                super::format_size(limit)
            ))));
        }
        self.budget.check_time().map_err(io::Error::other)?;
        self.text.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// tera's `range(start=0, end, step_by=1)`, drawing on the render's budget; `step_by=0`
/// (which loops forever in tera's) is an error.
fn range_function(
    args: &HashMap<String, tera::Value>,
    budget: &Budget,
) -> tera::Result<tera::Value> {
    let arg = |name: &str, default: Option<usize>| -> tera::Result<usize> {
        match args.get(name) {
            Some(value) => tera::from_value::<usize>(value.clone()).map_err(|_| {
                tera::Error::msg(format!(
                    "Function `range` received {name}={value} but `{name}` can only be a number"
                ))
            }),
            None => default.ok_or_else(|| {
                tera::Error::msg(format!(
                    "Function `range` was called without a `{name}` argument"
                ))
            }),
        }
    };
    let start = arg("start", Some(0))?;
    let step_by = arg("step_by", Some(1))?;
    let end = arg("end", None)?;
    if start > end {
        return Err(tera::Error::msg(
            "Function `range` was called with a `start` argument greater than the `end` one",
        ));
    }
    if step_by == 0 {
        return Err(tera::Error::msg(
            "Function `range` was called with step_by=0; the step must be at least 1",
        ));
    }
    budget.check_time().map_err(tera::Error::msg)?;
    let n = (end - start).div_ceil(step_by);
    budget.take_range_items(n).map_err(tera::Error::msg)?;
    Ok(tera::Value::Array(
        (start..end)
            .step_by(step_by)
            .map(tera::Value::from)
            .collect(),
    ))
}

/// Refuses what would take a template beyond its one file, or render without end: an
/// include, extends or import, a macro that calls itself (directly or through others) or
/// a chain of macro calls past [`MAX_NESTING`], a macro whose calls fan out past
/// [`MAX_MACRO_CALLS`], and a float literal too large for a float (tera would panic).
fn check_template(parsed: &tera::Template, source: &str) -> Result<(), String> {
    let mut all = Walk::default();
    all.nodes(&parsed.ast);
    if let Some((tag, target)) = all.outside.first() {
        return Err(format!(
            "`{{% {tag} %}}` is not allowed{}: a configuration template is one file, so include, extends and import are refused; put the text here (a macro can hold a part used more than once)",
            at_line(*target, source)
        ));
    }
    if all.infinite_literal {
        return Err(
            "a number in the template is too large for a 64-bit float; write a smaller one".into(),
        );
    }
    // Each macro's calls of the file's own macros (`self::name()`), in order, repeats kept.
    let mut calls: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (name, definition) in &parsed.macros {
        let mut walk = Walk::default();
        walk.nodes(&definition.body);
        for default in definition.args.values().flatten() {
            walk.expr(default);
        }
        let callees = walk
            .calls
            .iter()
            .filter(|c| c.namespace == "self" && parsed.macros.contains_key(&c.name))
            .map(|c| c.name.as_str())
            .collect();
        calls.insert(name.as_str(), callees);
    }
    let defined_at = |name: &str| {
        macro_line(source, name)
            .map(|l| format!(" (line {l})"))
            .unwrap_or_default()
    };
    match check_chains(&calls) {
        Ok(()) => {}
        Err(Chain::Cycle(cycle)) => {
            return Err(format!(
                "macro `{}` calls itself ({}): recursion is not allowed in a configuration template{}",
                cycle[0],
                cycle.join(" → "),
                defined_at(cycle[0])
            ));
        }
        Err(Chain::TooDeep(chain)) => {
            return Err(format!(
                "macros call one another more than {MAX_NESTING} deep ({} → …), past what a configuration template may nest{}",
                chain.join(" → "),
                defined_at(chain[0])
            ));
        }
    }
    let mut made = HashMap::new();
    for name in calls.keys() {
        let n = macro_calls(name, &calls, &mut made);
        if n > MAX_MACRO_CALLS {
            return Err(format!(
                "macro `{name}` leads to {n} macro calls each time it is called (counting each call in the text once), past the {MAX_MACRO_CALLS} allowed in a configuration template{}",
                defined_at(name)
            ));
        }
    }
    Ok(())
}

/// A chain of macro calls a template may not have.
enum Chain<'a> {
    /// The macros on a cycle, the first repeated at the end.
    Cycle(Vec<&'a str>),
    /// The first [`MAX_NESTING`] + 1 macros of a chain that long.
    TooDeep(Vec<&'a str>),
}

/// Finds a cycle among the macro calls, or a chain longer than [`MAX_NESTING`]; the walk
/// goes no deeper than that.
fn check_chains<'a>(calls: &BTreeMap<&'a str, Vec<&'a str>>) -> Result<(), Chain<'a>> {
    #[derive(Clone, Copy)]
    enum State {
        OnPath,
        /// Done; the longest chain from here, this macro included.
        Height(usize),
    }
    fn visit<'a>(
        name: &'a str,
        calls: &BTreeMap<&'a str, Vec<&'a str>>,
        state: &mut HashMap<&'a str, State>,
        path: &mut Vec<&'a str>,
    ) -> Result<usize, Chain<'a>> {
        state.insert(name, State::OnPath);
        path.push(name);
        if path.len() > MAX_NESTING {
            return Err(Chain::TooDeep(path.clone()));
        }
        let mut height = 1;
        for &callee in calls.get(name).into_iter().flatten() {
            let below = match state.get(callee).copied() {
                Some(State::OnPath) => {
                    let from = path.iter().position(|&n| n == callee).unwrap_or(0);
                    let mut cycle = path[from..].to_vec();
                    cycle.push(callee);
                    return Err(Chain::Cycle(cycle));
                }
                Some(State::Height(h)) if path.len() + h > MAX_NESTING => {
                    let mut chain = path.clone();
                    chain.push(callee);
                    return Err(Chain::TooDeep(chain));
                }
                Some(State::Height(h)) => h,
                None => visit(callee, calls, state, path)?,
            };
            height = height.max(below + 1);
        }
        path.pop();
        state.insert(name, State::Height(height));
        Ok(height)
    }
    let mut state = HashMap::new();
    for &name in calls.keys() {
        if !state.contains_key(name) {
            visit(name, calls, &mut state, &mut Vec::new())?;
        }
    }
    Ok(())
}

/// The macro calls one call of `name` leads to (the calls have no cycle, and no chain
/// longer than [`MAX_NESTING`]).
fn macro_calls<'a>(
    name: &'a str,
    calls: &BTreeMap<&'a str, Vec<&'a str>>,
    made: &mut HashMap<&'a str, u64>,
) -> u64 {
    if let Some(&n) = made.get(name) {
        return n;
    }
    let mut n = 0u64;
    for &callee in calls.get(name).into_iter().flatten() {
        n = n.saturating_add(1 + macro_calls(callee, calls, made).min(u64::MAX - 1));
    }
    made.insert(name, n);
    n
}

/// Everything in a template's nodes that [`check_template`] looks at.
#[derive(Default)]
struct Walk<'t> {
    /// Tags reaching outside the file: the tag and the template it names.
    outside: Vec<(&'static str, Option<&'t str>)>,
    /// Macro calls, in order.
    calls: Vec<&'t MacroCall>,
    /// Whether a float literal is too large to be finite.
    infinite_literal: bool,
}

impl<'t> Walk<'t> {
    fn nodes(&mut self, nodes: &'t [Node]) {
        for node in nodes {
            self.node(node);
        }
    }

    // Matches list every variant, so that a node tera adds is looked at here too.
    fn node(&mut self, node: &'t Node) {
        match node {
            Node::Super
            | Node::Text(_)
            | Node::Raw(..)
            | Node::Break(_)
            | Node::Continue(_)
            | Node::Comment(..) => {}
            Node::Extends(_, name) => self.outside.push(("extends", Some(name))),
            Node::Include(_, names, _) => self
                .outside
                .push(("include", names.first().map(String::as_str))),
            Node::ImportMacro(_, name, _) => self.outside.push(("import", Some(name))),
            Node::VariableBlock(_, expr) => self.expr(expr),
            Node::MacroDefinition(_, definition, _) => {
                for default in definition.args.values().flatten() {
                    self.expr(default);
                }
                self.nodes(&definition.body);
            }
            Node::Set(_, set) => self.expr(&set.value),
            Node::FilterSection(_, section, _) => {
                self.function(&section.filter);
                self.nodes(&section.body);
            }
            Node::Block(_, block, _) => self.nodes(&block.body),
            Node::Forloop(_, forloop, _) => {
                self.expr(&forloop.container);
                self.nodes(&forloop.body);
                if let Some(empty) = &forloop.empty_body {
                    self.nodes(empty);
                }
            }
            Node::If(branches, _) => {
                for (_, condition, body) in &branches.conditions {
                    self.expr(condition);
                    self.nodes(body);
                }
                if let Some((_, body)) = &branches.otherwise {
                    self.nodes(body);
                }
            }
        }
    }

    fn expr(&mut self, expr: &'t Expr) {
        self.value(&expr.val);
        for filter in &expr.filters {
            self.function(filter);
        }
    }

    fn function(&mut self, call: &'t FunctionCall) {
        for arg in call.args.values() {
            self.expr(arg);
        }
    }

    fn value(&mut self, value: &'t ExprVal) {
        match value {
            ExprVal::Float(f) => self.infinite_literal |= !f.is_finite(),
            ExprVal::String(_) | ExprVal::Int(_) | ExprVal::Bool(_) | ExprVal::Ident(_) => {}
            ExprVal::Math(math) => {
                self.expr(&math.lhs);
                self.expr(&math.rhs);
            }
            ExprVal::Logic(logic) => {
                self.expr(&logic.lhs);
                self.expr(&logic.rhs);
            }
            ExprVal::In(within) => {
                self.expr(&within.lhs);
                self.expr(&within.rhs);
            }
            ExprVal::Test(test) => {
                for arg in &test.args {
                    self.expr(arg);
                }
            }
            ExprVal::MacroCall(call) => {
                self.calls.push(call);
                for arg in call.args.values() {
                    self.expr(arg);
                }
            }
            ExprVal::FunctionCall(call) => self.function(call),
            ExprVal::Array(items) => {
                for item in items {
                    self.expr(item);
                }
            }
            ExprVal::StringConcat(concat) => {
                for value in &concat.values {
                    self.value(value);
                }
            }
        }
    }
}

/// Refuses, before tera parses it, a template nested deeper than tera's parser and
/// renderer (which recurse) should go: blocks in one another past [`MAX_NESTING`],
/// brackets in one tag past it too, or a tag with more than [`MAX_OPERATORS`] operators.
/// Comments and `{% raw %}` sections are skipped, and so are string literals in tags.
fn check_nesting(source: &str) -> Result<(), String> {
    let bytes = source.as_bytes();
    let line = |at: usize| source[..at].bytes().filter(|&b| b == b'\n').count() + 1;
    let find = |from: usize, what: &[u8]| {
        bytes
            .get(from..)
            .and_then(|rest| rest.windows(what.len()).position(|w| w == what))
            .map(|i| from + i)
    };
    let mut blocks = 0usize;
    let mut at = 0;
    while let Some(open) = find(at, b"{") {
        let close: &[u8] = match bytes.get(open + 1) {
            Some(b'#') => {
                at = find(open + 2, b"#}").map_or(bytes.len(), |end| end + 2);
                continue;
            }
            Some(b'{') => b"}}",
            Some(b'%') => b"%}",
            _ => {
                at = open + 1;
                continue;
            }
        };
        let tag = scan_tag(bytes, open + 2, close);
        if tag.depth > MAX_NESTING {
            return Err(format!(
                "brackets nest more than {MAX_NESTING} deep in one tag (line {}), past what a configuration template may nest",
                line(open)
            ));
        }
        if tag.operators > MAX_OPERATORS {
            return Err(format!(
                "one tag holds more than {MAX_OPERATORS} operators (line {}), past what a configuration template may chain",
                line(open)
            ));
        }
        at = tag.end;
        if close == b"%}" {
            match tag.first_word {
                "if" | "for" | "macro" | "filter" | "block" => {
                    blocks += 1;
                    if blocks > MAX_NESTING {
                        return Err(format!(
                            "`{{% {} %}}` (line {}) opens a block {blocks} deep, past the {MAX_NESTING} blocks a configuration template may nest in one another",
                            tag.first_word,
                            line(open),
                        ));
                    }
                }
                "endif" | "endfor" | "endmacro" | "endfilter" | "endblock" => {
                    blocks = blocks.saturating_sub(1);
                }
                // Nothing in a raw section is a tag.
                "raw" => {
                    at = find(at, b"endraw")
                        .and_then(|end| find(end, b"%}"))
                        .map_or(bytes.len(), |end| end + 2);
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// What [`check_nesting`] learns of one tag.
struct Tag<'s> {
    /// Just past the closing delimiter (or the end of the text).
    end: usize,
    /// The first word, like `for` or `endif` (empty in `{{ }}` tags that start otherwise).
    first_word: &'s str,
    /// The deepest bracket nesting.
    depth: usize,
    /// Operators: runs of operator characters, and `and`, `or`, `not`, `in`, `is`.
    operators: usize,
}

/// Scans a tag from just after its opening delimiter to its `close`.
fn scan_tag<'s>(bytes: &'s [u8], start: usize, close: &[u8]) -> Tag<'s> {
    let mut tag = Tag {
        end: bytes.len(),
        first_word: "",
        depth: 0,
        operators: 0,
    };
    let mut depth = 0usize;
    let mut words = 0usize;
    let mut i = start;
    // The whitespace control of `{%-` is no operator.
    if bytes.get(i) == Some(&b'-') {
        i += 1;
    }
    while i < bytes.len() {
        let b = bytes[i];
        if bytes[i..].starts_with(close) {
            tag.end = i + close.len();
            break;
        }
        match b {
            b'"' | b'\'' | b'`' => {
                i = bytes[i + 1..]
                    .iter()
                    .position(|&c| c == b)
                    .map_or(bytes.len(), |p| i + 1 + p + 1);
                words += 1;
                continue;
            }
            b'(' | b'[' => {
                depth += 1;
                tag.depth = tag.depth.max(depth);
            }
            b')' | b']' => depth = depth.saturating_sub(1),
            b'+' | b'-' | b'*' | b'/' | b'%' | b'~' | b'<' | b'>' | b'=' | b'!' => {
                // One operator however many characters (`<=`), stopping short of the
                // closing delimiter (`-%}`).
                tag.operators += 1;
                while i < bytes.len()
                    && b"+-*/%~<>=!".contains(&bytes[i])
                    && !bytes[i..].starts_with(close)
                {
                    i += 1;
                }
                continue;
            }
            b'a'..=b'z' | b'A'..=b'Z' | b'_' => {
                let len = bytes[i..]
                    .iter()
                    .take_while(|c| c.is_ascii_alphanumeric() || **c == b'_')
                    .count();
                let word = std::str::from_utf8(&bytes[i..i + len]).unwrap_or_default();
                if words == 0 {
                    tag.first_word = word;
                }
                if matches!(word, "and" | "or" | "not" | "in" | "is") {
                    tag.operators += 1;
                }
                words += 1;
                i += len;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    tag
}

/// " (line N)" for the first `{% tag "name" %}` naming `target`, if found.
fn at_line(target: Option<&str>, source: &str) -> String {
    target
        .and_then(|t| {
            source
                .lines()
                .position(|l| l.contains("{%") && l.contains(t))
                .map(|i| format!(" (line {})", i + 1))
        })
        .unwrap_or_default()
}

/// The 1-based line of `{% macro name(`, if found.
fn macro_line(source: &str, name: &str) -> Option<usize> {
    source
        .lines()
        .position(|l| {
            l.split("{%").skip(1).any(|tag| {
                let tag = tag.trim_start_matches('-').trim_start();
                tag.strip_prefix("macro")
                    .map(str::trim_start)
                    .and_then(|rest| rest.strip_prefix(name))
                    .is_some_and(|rest| rest.trim_start().starts_with('('))
            })
        })
        .map(|i| i + 1)
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

    fn refusal(template: &str) -> String {
        render_text(template, serde_json::json!({}))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn recursive_macros_are_refused_naming_the_cycle() {
        let err = refusal(
            "a: 1\n{% macro a(n) %}{{ self::a(n=n) }}{% endmacro a %}\nb: {{ self::a(n=1) }}\n",
        );
        assert_eq!(
            err,
            "weir.yaml: template: macro `a` calls itself (a → a): recursion is not allowed in a configuration template (line 2)"
        );
        // Through another macro, from inside a loop, an if, a filter section and an
        // argument.
        let err = refusal(
            "{% macro a() %}{% for i in [1] %}{% if true %}{{ self::b() }}{% endif %}{% endfor %}{% endmacro %}\n\
             {% macro b() %}{% filter upper %}{{ self::c(x=self::a()) }}{% endfilter %}{% endmacro %}\n\
             {% macro c(x) %}{{ x }}{% endmacro %}\n\
             {{ self::a() }}\n",
        );
        assert_eq!(
            err,
            "weir.yaml: template: macro `a` calls itself (a → b → a): recursion is not allowed in a configuration template (line 1)"
        );
        let err = refusal(
            "{% macro x() %}{% set v = 1 + self::y() | length %}{% endmacro %}\n\
             {% macro y() %}{% if 'a' in [self::x()] %}{% endif %}{% endmacro %}\n",
        );
        assert!(err.contains("macro `x` calls itself (x → y → x)"), "{err}");
    }

    #[test]
    fn include_extends_and_import_are_refused() {
        for (template, tag) in [
            ("a: 1\n{% include \"weir.yaml\" %}\n", "include"),
            ("{% extends \"weir.yaml\" %}\n", "extends"),
            ("{% extends \"base.yaml\" %}\n", "extends"),
            (
                "{% import \"weir.yaml\" as m %}\na: {{ m::x() }}\n",
                "import",
            ),
            (
                "{% if true %}{% include \"other.yaml\" ignore missing %}{% endif %}\n",
                "include",
            ),
        ] {
            let err = refusal(template);
            assert!(
                err.starts_with(&format!(
                    "weir.yaml: template: `{{% {tag} %}}` is not allowed"
                )),
                "{err}"
            );
            assert!(
                err.contains("a configuration template is one file"),
                "{err}"
            );
        }
        assert!(refusal("a: 1\n{% include \"weir.yaml\" %}\n").contains("(line 2)"));
    }

    #[test]
    fn macros_fanning_out_past_the_bound_are_refused() {
        // Each macro calls the next twice: 2^20 calls from m0.
        let mut template = String::new();
        for i in 0..20 {
            template.push_str(&format!(
                "{{% macro m{i}() %}}{{{{ self::m{j}() }}}}{{{{ self::m{j}() }}}}{{% endmacro %}}\n",
                j = i + 1
            ));
        }
        template.push_str("{% macro m20() %}x{% endmacro %}\n{{ self::m0() }}\n");
        let err = refusal(&template);
        assert!(
            err.starts_with("weir.yaml: template: macro `m0` leads to 2097150 macro calls"),
            "{err}"
        );
    }

    #[test]
    fn a_huge_range_is_refused_at_once() {
        let err = refusal("{% for i in range(end=200000000) %}x{% endfor %}");
        assert_eq!(
            err,
            "weir.yaml: template: range() would make 200000000 numbers, past the 1000000 all range() calls of one render may make together"
        );
        // Nested ranges each within the bound, multiplying past it.
        let err = refusal(
            "{% for i in range(end=1000) %}{% for j in range(end=1000) %}{% for k in range(end=1000) %}{% endfor %}{% endfor %}{% endfor %}",
        );
        assert!(
            err.starts_with("weir.yaml: template: range() would make 1000 numbers after 1000000 made by earlier calls, past the 1000000"),
            "{err}"
        );
        assert!(
            refusal("{{ range(end=5, step_by=0) }}").contains("step_by=0"),
            "tera's range loops forever on a zero step"
        );
    }

    #[test]
    fn range_keeps_its_arguments() {
        let out = render_text(
            "{{ range(end=3) | join(sep=',') }};{{ range(start=2, end=9, step_by=3) | join(sep=',') }};{{ range(start=4, end=4) | length }}",
            serde_json::json!({}),
        )
        .unwrap();
        assert_eq!(out, "0,1,2;2,5,8;0");
        for (call, message) in [
            ("range(start=5, end=2)", "greater than the `end` one"),
            ("range(start=1)", "without a `end` argument"),
            (
                "range(end=-1)",
                "received end=-1 but `end` can only be a number",
            ),
            (
                "range(end=3, step_by='x')",
                "`step_by` can only be a number",
            ),
        ] {
            let err = refusal(&format!("{{{{ {call} }}}}"));
            assert!(err.contains(message), "{call}: {err}");
        }
    }

    #[test]
    fn output_and_time_are_bounded() {
        // 100000 lines of 200 bytes: more than 16 MiB.
        let values = serde_json::json!({"line": "y".repeat(199)});
        let err = render_text(
            "{% for i in range(end=100000) %}{{ values.line }}\n{% endfor %}",
            values,
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "weir.yaml: template: the rendered text passes 16MiB, the most a configuration template may produce: is a loop running away?"
        );
        let no_time = Limits {
            time: Duration::ZERO,
            ..LIMITS
        };
        std::thread::sleep(Duration::from_millis(1));
        let err = render_bounded(
            Path::new("weir.yaml"),
            "a: 1\n",
            &serde_json::json!({}),
            no_time,
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "weir.yaml: template: rendering takes longer than 0s, the most a configuration template may take: is a loop running away?"
        );
    }

    #[test]
    fn ordinary_templates_still_render() {
        let values = serde_json::json!({"pipelines": [{"name": "a"}, {"name": "b"}]});
        let out = render_text(
            "{% macro item(name) %}- {{ self::quoted(s=name) }}{% endmacro %}\n\
             {%- macro quoted(s) %}\"{{ s }}\"{% endmacro %}\n\
             {%- for p in values.pipelines %}\n{{ self::item(name=p.name) }}{% endfor %}\n\
             {% for i in range(start=1, end=4) %}{{ self::item(name=i) }}\n{% endfor %}\
             {% filter upper %}{{ self::quoted(s=self::quoted(s='x')) }}{% endfilter %}\n",
            values,
        )
        .unwrap();
        assert_eq!(
            out,
            "\n- \"a\"\n- \"b\"\n- \"1\"\n- \"2\"\n- \"3\"\n\"\"X\"\"\n"
        );
    }

    #[test]
    fn nesting_is_bounded_before_tera_parses() {
        let deep =
            |open: &str, close: &str, n: usize| format!("{}x{}", open.repeat(n), close.repeat(n));
        // 1000 `if`s in one another, or 5000 brackets, overflow tera's stack.
        let err = refusal(&deep("{% if true %}\n", "{% endif %}", 1000));
        assert_eq!(
            err,
            "weir.yaml: template: `{% if %}` (line 33) opens a block 33 deep, past the 32 blocks a configuration template may nest in one another"
        );
        let err = refusal(&format!("{{{{ {} }}}}", deep("(", ")", 5000)));
        assert!(
            err.contains("brackets nest more than 32 deep in one tag (line 1)"),
            "{err}"
        );
        let err = refusal(&format!(
            "{{% if true{} %}}x{{% endif %}}",
            " and true".repeat(5000)
        ));
        assert!(
            err.contains("one tag holds more than 256 operators (line 1)"),
            "{err}"
        );
        // Within the bounds, with whitespace control, comments, raw sections and strings
        // that look like tags or brackets.
        let template = format!(
            "{}{{# {{% if %}} ((( #}}{{% raw %}}{{% for %}}[[[{{% endraw %}}{{{{ '((((' ~ \"{{% if\" }}}}{}",
            "{%- for i in [1] -%}\n".repeat(32),
            "{%- endfor -%}".repeat(32)
        );
        assert_eq!(
            render_text(&template, serde_json::json!({})).unwrap(),
            "{% for %}[[[(((({% if"
        );
        let within = format!("{{{{ {}1{} }}}}", "(".repeat(32), ")".repeat(32));
        assert_eq!(render_text(&within, serde_json::json!({})).unwrap(), "1");
    }

    #[test]
    fn macro_chains_are_bounded() {
        let mut template = String::new();
        for i in 0..40 {
            template.push_str(&format!(
                "{{% macro m{i}() %}}{{{{ self::m{}() }}}}{{% endmacro %}}\n",
                i + 1
            ));
        }
        template.push_str("{% macro m40() %}x{% endmacro %}\n{{ self::m0() }}\n");
        let err = refusal(&template);
        assert!(
            err.starts_with(
                "weir.yaml: template: macros call one another more than 32 deep (m0 → m1 → m2 → "
            ),
            "{err}"
        );
        // A chain of 32 renders.
        let mut template = String::new();
        for i in 0..31 {
            template.push_str(&format!(
                "{{% macro m{i}() %}}{{{{ self::m{}() }}}}{{% endmacro %}}",
                i + 1
            ));
        }
        template.push_str("{% macro m31() %}x{% endmacro %}{{ self::m0() }}");
        assert_eq!(render_text(&template, serde_json::json!({})).unwrap(), "x");
    }

    #[test]
    fn a_float_literal_too_large_is_refused() {
        // tera would panic turning it into a JSON number.
        let err = refusal(&format!("{{{{ {}.0 }}}}", "9".repeat(400)));
        assert_eq!(
            err,
            "weir.yaml: template: a number in the template is too large for a 64-bit float; write a smaller one"
        );
    }
}
