//! Checking a component against a `weir:processor` world before it may run: which
//! released version it targets ([`Contract`]), and that it imports nothing else and
//! exports what that version calls.

use std::fmt;

use wasmtime::Engine;
use wasmtime::component::Component;
use wasmtime::component::types::ComponentItem;

use super::LoadError;

/// The released versions of the guest contract a guest may target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Contract {
    /// `weir:processor@0.1.0`: `process` only, config in every batch, named fields.
    #[serde(rename = "weir:processor@0.1.0")]
    V1,
    /// `weir:processor@0.2.0`: `init` and `process`, values by position, state and
    /// lookups.
    #[serde(rename = "weir:processor@0.2.0")]
    V2,
}

impl Contract {
    /// Every version, oldest first.
    pub const ALL: [Contract; 2] = [Contract::V1, Contract::V2];

    /// The world's name: `weir:processor@0.2.0`.
    pub fn world(self) -> &'static str {
        match self {
            Contract::V1 => "weir:processor@0.1.0",
            Contract::V2 => "weir:processor@0.2.0",
        }
    }

    /// The only interfaces a guest of this version may import.
    pub fn allowed_imports(self) -> &'static [&'static str] {
        match self {
            Contract::V1 => &[
                "weir:processor/types@0.1.0",
                "weir:processor/logging@0.1.0",
                "weir:processor/metrics@0.1.0",
            ],
            Contract::V2 => &[
                "weir:processor/types@0.2.0",
                "weir:processor/logging@0.2.0",
                "weir:processor/metrics@0.2.0",
                "weir:processor/state@0.2.0",
                "weir:processor/lookup@0.2.0",
            ],
        }
    }

    /// The functions a guest of this version must export.
    pub fn exports(self) -> &'static [&'static str] {
        match self {
            Contract::V1 => &[PROCESS_EXPORT],
            Contract::V2 => &[INIT_EXPORT, PROCESS_EXPORT],
        }
    }

    /// The version a component's imports and exports say it targets: 0.2.0 when it
    /// imports an interface of 0.2.0 or exports `init`, else 0.1.0.
    pub fn of(info: &GuestInfo) -> Contract {
        let v2 = Contract::V2.allowed_imports();
        if info.imports.iter().any(|i| v2.contains(&i.name.as_str()))
            || info.exports.iter().any(|e| e.name == INIT_EXPORT)
        {
            Contract::V2
        } else {
            Contract::V1
        }
    }
}

impl fmt::Display for Contract {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.world())
    }
}

/// The world names a refusal lists.
pub const WORLD: &str = "weir:processor@0.1.0 or weir:processor@0.2.0";

/// The export the host calls per batch.
pub const PROCESS_EXPORT: &str = "process";

/// The export that takes a 0.2.0 guest's config.
pub const INIT_EXPORT: &str = "init";

/// The interface through which a 0.2.0 guest reaches its state.
pub const STATE_IMPORT: &str = "weir:processor/state@0.2.0";

/// The interface through which a 0.2.0 guest runs lookups.
pub const LOOKUP_IMPORT: &str = "weir:processor/lookup@0.2.0";

/// What a component imports and exports, and the contract version that makes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestInfo {
    /// The version of the contract it targets.
    pub contract: Contract,
    /// The component's world, as WIT (when its type information decodes).
    pub wit: Option<String>,
    /// Imports, in order.
    pub imports: Vec<Item>,
    /// Exports, in order.
    pub exports: Vec<Item>,
}

/// One import or export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// Its name (`weir:processor/logging@0.1.0`, `process`).
    pub name: String,
    /// What it is: `interface`, `func`, `type`, `module`, `component`, `resource`.
    pub kind: &'static str,
    /// Whether the world allows it.
    pub allowed: bool,
}

impl GuestInfo {
    /// What `imports` and `exports` make: the contract they target, each item marked
    /// allowed or not by it.
    fn new(wit: Option<String>, imports: Vec<Item>, exports: Vec<Item>) -> Self {
        let mut info = GuestInfo {
            contract: Contract::V1,
            wit,
            imports,
            exports,
        };
        info.contract = Contract::of(&info);
        let allowed = info.contract.allowed_imports();
        for i in &mut info.imports {
            i.allowed = allowed.contains(&i.name.as_str());
        }
        let exports = info.contract.exports();
        for e in &mut info.exports {
            e.allowed = exports.contains(&e.name.as_str());
        }
        info
    }

    /// Whether it imports the interface `name`.
    pub fn imports(&self, name: &str) -> bool {
        self.imports.iter().any(|i| i.name == name)
    }

    /// Imports outside the world.
    pub fn forbidden_imports(&self) -> Vec<String> {
        self.imports
            .iter()
            .filter(|i| !i.allowed)
            .map(|i| i.name.clone())
            .collect()
    }
}

/// Most imports or exports a refusal lists by name; the rest are counted.
const MAX_LISTED: usize = 10;

/// Longest import or export name a refusal shows.
const MAX_NAME: usize = 200;

/// Tells a core module, a component and garbage apart by the header.
fn check_header(name: &str, bytes: &[u8]) -> Result<(), LoadError> {
    let guest = || name.to_string();
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        let detail = if bytes.is_empty() {
            "the file is empty".to_string()
        } else {
            format!(
                "{} bytes without the \\0asm magic number; it starts {}",
                bytes.len(),
                hex::encode(&bytes[..bytes.len().min(8)])
            )
        };
        return Err(LoadError::NotWasm {
            guest: guest(),
            detail,
        });
    }
    match u16::from_le_bytes([bytes[6], bytes[7]]) {
        0 => Err(LoadError::CoreModule { guest: guest() }),
        1 => Ok(()),
        layer => Err(LoadError::NotWasm {
            guest: guest(),
            detail: format!("unknown WebAssembly layer {layer}"),
        }),
    }
}

/// The component's imports and exports, read from its top-level sections without
/// validating or compiling anything: cheap whatever its code, so a component that does not
/// fit the world is refused before it costs a compilation.
pub(crate) fn scan(name: &str, bytes: &[u8]) -> Result<GuestInfo, LoadError> {
    use wasmparser::{ComponentExternalKind, ComponentTypeRef, Parser, Payload};
    check_header(name, bytes)?;
    let malformed = |e: wasmparser::BinaryReaderError| LoadError::Compile {
        guest: name.into(),
        detail: format!("malformed component: {e}"),
    };
    let mut imports = Vec::new();
    let mut exports = Vec::new();
    // Nested modules and components have sections of their own: only the outermost
    // component's imports and exports are the guest's.
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.map_err(malformed)? {
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
            Payload::End(_) if depth == 0 => break,
            Payload::End(_) => depth -= 1,
            Payload::ComponentImportSection(section) if depth == 0 => {
                for import in section {
                    let import = import.map_err(malformed)?;
                    // A type equal to one defined elsewhere only names it (how a world's
                    // signatures refer to its types): no capability, nothing to grant.
                    if matches!(
                        import.ty,
                        ComponentTypeRef::Type(wasmparser::TypeBounds::Eq(_))
                    ) {
                        continue;
                    }
                    let kind = match import.ty {
                        ComponentTypeRef::Module(_) => "module",
                        ComponentTypeRef::Func(_) => "func",
                        ComponentTypeRef::Value(_) => "value",
                        ComponentTypeRef::Type(_) => "type",
                        ComponentTypeRef::Instance(_) => "interface",
                        ComponentTypeRef::Component(_) => "component",
                    };
                    // A name longer than any the world has is kept only as far as a
                    // refusal shows it.
                    imports.push(Item {
                        name: crate::text::truncate(import.name.name, MAX_NAME),
                        kind,
                        allowed: false,
                    });
                }
            }
            Payload::ComponentExportSection(section) if depth == 0 => {
                for export in section {
                    let export = export.map_err(malformed)?;
                    let kind = match export.kind {
                        ComponentExternalKind::Module => "module",
                        ComponentExternalKind::Func => "func",
                        ComponentExternalKind::Value => "value",
                        ComponentExternalKind::Type => "type",
                        ComponentExternalKind::Instance => "interface",
                        ComponentExternalKind::Component => "component",
                    };
                    exports.push(Item {
                        name: crate::text::truncate(export.name.name, MAX_NAME),
                        kind,
                        allowed: false,
                    });
                }
            }
            _ => {}
        }
    }
    Ok(GuestInfo::new(None, imports, exports))
}

/// Compiles a component, checking its header first.
pub(crate) fn compile(
    engine: &Engine,
    name: &str,
    bytes: &[u8],
) -> Result<(Component, GuestInfo), LoadError> {
    check_header(name, bytes)?;
    let component = Component::new(engine, bytes).map_err(|e| LoadError::Compile {
        guest: name.into(),
        detail: format!("{e:#}"),
    })?;
    let info = describe(engine, &component, bytes);
    Ok((component, info))
}

/// What a compiled component imports and exports, and its world as WIT.
pub(crate) fn describe(engine: &Engine, component: &Component, bytes: &[u8]) -> GuestInfo {
    let ty = component.component_type();
    let imports = ty
        .imports(engine)
        .map(|(name, item)| Item {
            name: name.to_string(),
            kind: kind(&item.ty),
            allowed: false,
        })
        .collect();
    let exports = ty
        .exports(engine)
        .map(|(name, item)| Item {
            name: name.to_string(),
            kind: kind(&item.ty),
            allowed: false,
        })
        .collect();
    GuestInfo::new(world_wit(bytes), imports, exports)
}

/// Names for a refusal: each cut to a readable length, and at most [`MAX_LISTED`] of them.
pub(crate) fn listed(names: &[String]) -> String {
    let mut shown: Vec<String> = names
        .iter()
        .take(MAX_LISTED)
        .map(|n| crate::text::escape_control(&crate::text::truncate(n, MAX_NAME)).into_owned())
        .collect();
    if names.len() > MAX_LISTED {
        shown.push(format!("and {} more", names.len() - MAX_LISTED));
    }
    shown.join(", ")
}

/// Checks imports and exports by name against the contract the component targets; the
/// linker then checks types.
pub(crate) fn fits(name: &str, info: &GuestInfo) -> Result<(), LoadError> {
    let forbidden = info.forbidden_imports();
    if !forbidden.is_empty() {
        return Err(LoadError::ForbiddenImports {
            guest: name.into(),
            contract: info.contract,
            imports: forbidden,
        });
    }
    for wanted in info.contract.exports() {
        match info.exports.iter().find(|e| e.name == *wanted) {
            Some(e) if e.kind == "func" => {}
            Some(e) => {
                return Err(LoadError::WrongWorld {
                    guest: name.into(),
                    detail: format!("`{wanted}` is a {}, not a function", e.kind),
                });
            }
            None => {
                let signature = match *wanted {
                    INIT_EXPORT => "init: func(config: list<config-entry>) -> result<_, string>",
                    _ if info.contract == Contract::V1 => {
                        "process: func(batch: batch) -> list<outcome>"
                    }
                    _ => "process: func(batch: batch) -> output",
                };
                return Err(LoadError::WrongWorld {
                    guest: name.into(),
                    detail: format!(
                        "by its imports and exports it targets {}, but it exports {}, not `{signature}`",
                        info.contract,
                        if info.exports.is_empty() {
                            "nothing".to_string()
                        } else {
                            let names: Vec<String> = info
                                .exports
                                .iter()
                                .map(|e| format!("`{}`", e.name))
                                .collect();
                            listed(&names)
                        },
                    ),
                });
            }
        }
    }
    Ok(())
}

fn kind(item: &ComponentItem) -> &'static str {
    match item {
        ComponentItem::ComponentFunc(_) | ComponentItem::CoreFunc(_) => "func",
        ComponentItem::Module(_) => "module",
        ComponentItem::Component(_) => "component",
        ComponentItem::ComponentInstance(_) => "interface",
        ComponentItem::Type(_) => "type",
        ComponentItem::Resource(_) => "resource",
    }
}

/// The component's own world printed as WIT, without the packages it refers to.
fn world_wit(bytes: &[u8]) -> Option<String> {
    let wit_parser::decoding::DecodedWasm::Component(resolve, world) =
        wit_parser::decoding::decode(bytes).ok()?
    else {
        return None;
    };
    let package = resolve.worlds[world].package?;
    let mut printer = wit_component::WitPrinter::default();
    printer.emit_docs(false);
    printer.print(&resolve, package, &[]).ok()?;
    let text = printer.output.to_string();
    // Drop the synthetic `package root:component;` line.
    let body = text
        .lines()
        .skip_while(|l| l.starts_with("package ") || l.trim().is_empty())
        .map(str::trim_end)
        .collect::<Vec<_>>()
        .join("\n");
    Some(body)
}
