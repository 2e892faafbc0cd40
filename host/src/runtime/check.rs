//! Checking a component against the `weir:processor` world before it may run.

use wasmtime::Engine;
use wasmtime::component::Component;
use wasmtime::component::types::ComponentItem;

use super::LoadError;

/// The world a guest must fit.
pub const WORLD: &str = "weir:processor@0.1.0";

/// The only interfaces a guest may import.
pub const ALLOWED_IMPORTS: &[&str] = &[
    "weir:processor/types@0.1.0",
    "weir:processor/logging@0.1.0",
    "weir:processor/metrics@0.1.0",
];

/// The export the host calls.
pub const PROCESS_EXPORT: &str = "process";

/// What a component imports and exports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestInfo {
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
    /// Imports outside the world.
    pub fn forbidden_imports(&self) -> Vec<String> {
        self.imports
            .iter()
            .filter(|i| !i.allowed)
            .map(|i| i.name.clone())
            .collect()
    }
}

/// Tells a core module, a component and garbage apart by the header, then compiles.
pub(crate) fn compile(
    engine: &Engine,
    name: &str,
    bytes: &[u8],
) -> Result<(Component, GuestInfo), LoadError> {
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
        0 => return Err(LoadError::CoreModule { guest: guest() }),
        1 => {}
        layer => {
            return Err(LoadError::NotWasm {
                guest: guest(),
                detail: format!("unknown WebAssembly layer {layer}"),
            });
        }
    }
    let component = Component::new(engine, bytes).map_err(|e| LoadError::Compile {
        guest: guest(),
        detail: format!("{e:#}"),
    })?;
    let ty = component.component_type();
    let imports = ty
        .imports(engine)
        .map(|(name, item)| Item {
            name: name.to_string(),
            kind: kind(&item.ty),
            allowed: ALLOWED_IMPORTS.contains(&name),
        })
        .collect();
    let exports = ty
        .exports(engine)
        .map(|(name, item)| Item {
            name: name.to_string(),
            kind: kind(&item.ty),
            allowed: name == PROCESS_EXPORT,
        })
        .collect();
    let info = GuestInfo {
        wit: world_wit(bytes),
        imports,
        exports,
    };
    Ok((component, info))
}

/// Checks imports and the `process` export by name; the linker then checks types.
pub(crate) fn fits(name: &str, info: &GuestInfo) -> Result<(), LoadError> {
    let forbidden = info.forbidden_imports();
    if !forbidden.is_empty() {
        return Err(LoadError::ForbiddenImports {
            guest: name.into(),
            imports: forbidden,
        });
    }
    let process = info.exports.iter().find(|e| e.name == PROCESS_EXPORT);
    match process {
        Some(e) if e.kind == "func" => Ok(()),
        Some(e) => Err(LoadError::WrongWorld {
            guest: name.into(),
            detail: format!("`{PROCESS_EXPORT}` is a {}, not a function", e.kind),
        }),
        None => Err(LoadError::WrongWorld {
            guest: name.into(),
            detail: format!(
                "it exports {} but not `{PROCESS_EXPORT}: func(batch: batch) -> list<outcome>`",
                if info.exports.is_empty() {
                    "nothing".to_string()
                } else {
                    info.exports
                        .iter()
                        .map(|e| format!("`{}`", e.name))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ),
        }),
    }
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
