//! The capability manifest of a Warden plugin.
//!
//! A plugin declares what it needs from the outside world (programs it may run, paths it may read,
//! host:port pairs it may probe) in a `warden.toml` next to its source. The build
//! (`cargo xtask plugins`) embeds that file as a top-level custom section named
//! [`SECTION_NAME`] in the component, so the declaration travels with the bytes and is covered by
//! the plugin's signature.
//!
//! The same [`Capabilities`] shape is used for the operator's grants. A host call is allowed only
//! when it matches the declaration **and** a grant (the two keys); see [`pattern`] for the matching
//! rules.

pub mod pattern;

use serde::{Deserialize, Serialize};

pub use pattern::{ArgsPattern, ConnectPattern, EnvPattern, ExecRule, PathPattern, PatternError, MAX_REQUEST_LEN};

/// Name of the custom section that holds the manifest TOML.
pub const SECTION_NAME: &str = "warden-manifest";

/// The only manifest format version this crate reads.
pub const MANIFEST_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("invalid manifest: {0}")]
    Toml(#[from] toml::de::Error),
    #[error("manifest version {found} is not supported (this Warden reads version {MANIFEST_VERSION})")]
    Version { found: u32 },
    #[error("not a WebAssembly component: {0}")]
    NotWasm(String),
    #[error(
        "the component has no `{SECTION_NAME}` section; build it with `cargo xtask plugins` or add one with `warden plugin package COMPONENT --manifest warden.toml -o PLUGIN.wasm`"
    )]
    Missing,
    #[error("the component has more than one `{SECTION_NAME}` section")]
    Duplicate,
    #[error("the `{SECTION_NAME}` section is not UTF-8")]
    NotUtf8,
}

/// Which world the component implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum World {
    #[default]
    ResourceAgent,
    FenceAgent,
}

impl std::fmt::Display for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            World::ResourceAgent => "resource-agent",
            World::FenceAgent => "fence-agent",
        })
    }
}

/// `warden.toml`: what a plugin is and what it may touch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Format version; must be [`MANIFEST_VERSION`].
    pub version: u32,
    /// The plugin's name; must equal the name its `metadata()` returns.
    pub name: String,
    #[serde(default)]
    pub world: World,
    #[serde(default)]
    pub capabilities: Capabilities,
}

/// A set of capabilities: what a plugin declares, or what an operator grants to a resource.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exec: Vec<ExecRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub read: Vec<PathPattern>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub connect: Vec<ConnectPattern>,
    /// Environment variables the plugin may set for the programs it runs (names, `*` allowed).
    /// Nothing else reaches a child: a variable like `PYTHONWARNINGS` or `BROWSER` can make a
    /// granted program run other code, so the environment is a capability like any other.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvPattern>,
}

impl Capabilities {
    pub fn is_empty(&self) -> bool {
        self.exec.is_empty() && self.read.is_empty() && self.connect.is_empty() && self.env.is_empty()
    }

    /// True when some exec rule allows `program` with `args`.
    pub fn allows_exec(&self, program: &str, args: &[String]) -> bool {
        self.exec.iter().any(|r| r.matches(program, args))
    }

    /// True when some read pattern covers `path` (an absolute, `..`-free path).
    pub fn allows_read(&self, path: &str) -> bool {
        self.read.iter().any(|p| p.matches(path))
    }

    pub fn allows_connect(&self, host: &str, port: u16) -> bool {
        self.connect.iter().any(|p| p.matches(host, port))
    }

    /// True when some connect pattern allows this address (a literal or a resolved name).
    pub fn allows_connect_addr(&self, ip: std::net::IpAddr, port: u16) -> bool {
        self.connect.iter().any(|p| p.matches_addr(ip, port))
    }

    /// True when some env pattern allows setting the variable `name`.
    pub fn allows_env(&self, name: &str) -> bool {
        self.env.iter().any(|p| p.matches(name))
    }

    /// The grants in `self` that no declaration in `declared` covers. Used to refuse, at config
    /// load, a grant the plugin never asked for (it would be dead, or a sign of a wrong plugin).
    pub fn not_covered_by(&self, declared: &Capabilities) -> Vec<String> {
        let mut out = Vec::new();
        for g in &self.exec {
            if !declared.exec.iter().any(|d| d.covers(g)) {
                out.push(format!("exec {g}"));
            }
        }
        for g in &self.read {
            if !declared.read.iter().any(|d| d.covers(g)) {
                out.push(format!("read {g}"));
            }
        }
        for g in &self.connect {
            if !declared.connect.iter().any(|d| d.covers(g)) {
                out.push(format!("connect {g}"));
            }
        }
        for g in &self.env {
            if !declared.env.iter().any(|d| d.covers(g)) {
                out.push(format!("env {g}"));
            }
        }
        out
    }
}

impl Manifest {
    pub fn from_toml(text: &str) -> Result<Self, ManifestError> {
        let m: Manifest = toml::from_str(text)?;
        if m.version != MANIFEST_VERSION {
            return Err(ManifestError::Version { found: m.version });
        }
        Ok(m)
    }

    /// Read the manifest embedded in a component.
    pub fn from_component(bytes: &[u8]) -> Result<Self, ManifestError> {
        let text = extract_section(bytes)?.ok_or(ManifestError::Missing)?;
        Self::from_toml(&text)
    }
}

/// The text of the top-level manifest section, if any. Sections inside nested core modules are
/// ignored on purpose: only the outermost component speaks for the plugin.
pub fn extract_section(bytes: &[u8]) -> Result<Option<String>, ManifestError> {
    let mut found = None;
    for (depth, payload) in top_level_payloads(bytes)? {
        if depth != 1 {
            continue;
        }
        if let wasmparser::Payload::CustomSection(reader) = payload {
            if reader.name() == SECTION_NAME {
                if found.is_some() {
                    return Err(ManifestError::Duplicate);
                }
                let text = std::str::from_utf8(reader.data()).map_err(|_| ManifestError::NotUtf8)?;
                found = Some(text.to_owned());
            }
        }
    }
    Ok(found)
}

/// Return `component` with its manifest section replaced by `manifest_toml` (appended at the end,
/// which the component binary format allows for custom sections).
pub fn embed_section(component: &[u8], manifest_toml: &str) -> Result<Vec<u8>, ManifestError> {
    Manifest::from_toml(manifest_toml)?;
    // Copy the component, leaving out any top-level manifest section already there.
    let mut out = Vec::with_capacity(component.len() + manifest_toml.len() + 32);
    let mut last = 0usize;
    for (depth, payload) in top_level_payloads(component)? {
        if depth != 1 {
            continue;
        }
        if let wasmparser::Payload::CustomSection(reader) = &payload {
            if reader.name() == SECTION_NAME {
                let range = reader.range();
                // The section starts with its id byte and a LEB128 size before the payload range.
                let start = section_start(component, range.start);
                out.extend_from_slice(&component[last..start]);
                last = range.end;
            }
        }
    }
    out.extend_from_slice(&component[last..]);
    use wasm_encoder::Encode;
    out.push(0); // custom section id; `encode` writes the size, name and data
    wasm_encoder::CustomSection { name: SECTION_NAME.into(), data: manifest_toml.as_bytes().into() }.encode(&mut out);
    Ok(out)
}

/// The offset of a custom section's id byte, given the offset where its payload (the name) begins.
fn section_start(bytes: &[u8], payload_start: usize) -> usize {
    // Walk back over the LEB128 size (its last byte has the high bit clear; earlier ones set).
    let mut i = payload_start - 1; // last byte of the size
    while i > 0 && bytes[i - 1] & 0x80 != 0 {
        i -= 1;
    }
    i - 1 // the id byte
}

fn top_level_payloads(bytes: &[u8]) -> Result<Vec<(u32, wasmparser::Payload<'_>)>, ManifestError> {
    if !wasmparser::Parser::is_component(bytes) {
        return Err(ManifestError::NotWasm("missing the component header".into()));
    }
    let mut depth = 0u32;
    let mut out = Vec::new();
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        let payload = payload.map_err(|e| ManifestError::NotWasm(e.to_string()))?;
        match payload {
            wasmparser::Payload::Version { .. } => depth += 1,
            wasmparser::Payload::End(_) => depth = depth.saturating_sub(1),
            _ => out.push((depth, payload)),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
version = 1
name = "demo"
[capabilities]
exec = [{ program = "/usr/bin/true" }]
read = ["/run/demo/**"]
connect = ["127.0.0.1:*"]
"#;

    // The smallest valid component: header only.
    const EMPTY_COMPONENT: &[u8] = b"\0asm\x0d\0\x01\0";

    #[test]
    fn embeds_and_extracts_round_trip() {
        let with = embed_section(EMPTY_COMPONENT, EXAMPLE).unwrap();
        let m = Manifest::from_component(&with).unwrap();
        assert_eq!(m.name, "demo");
        assert!(m.capabilities.allows_exec("/usr/bin/true", &[]));
    }

    #[test]
    fn re_embedding_replaces_the_old_section() {
        let once = embed_section(EMPTY_COMPONENT, EXAMPLE).unwrap();
        let other = EXAMPLE.replace("name = \"demo\"", "name = \"other\"");
        let twice = embed_section(&once, &other).unwrap();
        assert_eq!(Manifest::from_component(&twice).unwrap().name, "other");
        assert_eq!(twice, embed_section(EMPTY_COMPONENT, &other).unwrap());
    }

    #[test]
    fn missing_section_is_a_clear_error() {
        let err = Manifest::from_component(EMPTY_COMPONENT).unwrap_err();
        assert!(err.to_string().contains("no `warden-manifest` section"), "{err}");
    }

    #[test]
    fn refuses_a_core_module() {
        let err = Manifest::from_component(b"\0asm\x01\0\0\0").unwrap_err();
        assert!(matches!(err, ManifestError::NotWasm(_)));
    }

    #[test]
    fn unknown_fields_and_versions_are_refused() {
        let err = Manifest::from_toml("version = 1\nname = \"x\"\nflavour = 2\n").unwrap_err();
        assert!(err.to_string().contains("unknown field `flavour`"), "{err}");
        let err = Manifest::from_toml("version = 2\nname = \"x\"\n").unwrap_err();
        assert!(matches!(err, ManifestError::Version { found: 2 }));
    }

    #[test]
    fn reports_grants_the_plugin_did_not_declare() {
        let declared = Manifest::from_toml(EXAMPLE).unwrap().capabilities;
        let grants: Capabilities = toml::from_str(
            r#"
exec = [{ program = "/usr/bin/true" }, { program = "/bin/sh" }]
read = ["/run/demo/state"]
connect = ["127.0.0.1:8080", "10.0.0.1:22"]
"#,
        )
        .unwrap();
        assert_eq!(grants.not_covered_by(&declared), vec!["exec /bin/sh (any arguments)", "connect 10.0.0.1:22"]);
    }
}
