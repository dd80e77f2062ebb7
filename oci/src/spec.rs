//! Loading config.json: errors name the offending field, and the bundle's
//! basic requirements are checked before anything is created.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{Process, Spec};

use crate::error::{bail, Error, Result};

/// Parse a JSON document into `T`; a type error names the JSON path of the
/// field (`process.args`, `linux.namespaces[0].type`).
pub fn parse<T: serde::de::DeserializeOwned>(what: &str, text: &str) -> Result<T> {
    let de = &mut serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." || path.is_empty() {
            Error::msg(format!("{what}: invalid: {inner}"))
        } else {
            Error::msg(format!("{what}: invalid field {path}: {inner}"))
        }
    })
}

/// The bundle's config.json, checked.
pub fn load(bundle: &Path) -> Result<Spec> {
    let p = bundle.join("config.json");
    let text = match std::fs::read_to_string(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("{}: config.json not found in the bundle", p.display())
        }
        Err(e) => bail!("{}: {e}", p.display()),
    };
    let spec: Spec = parse("config.json", &text)?;
    validate(&spec)?;
    Ok(spec)
}

fn validate(spec: &Spec) -> Result<()> {
    let Some(proc_) = spec.process() else {
        bail!("config.json: invalid field process: missing")
    };
    check_process(proc_, "config.json: invalid field process")?;
    if spec.root().is_none() {
        bail!("config.json: invalid field root: missing")
    }
    if spec.linux().is_none() {
        bail!("config.json: invalid field linux: missing")
    }
    Ok(())
}

pub fn check_process(p: &Process, prefix: &str) -> Result<()> {
    match p.args() {
        Some(a) if !a.is_empty() => {}
        _ => bail!("{prefix}.args: empty, there is no program to run"),
    }
    if !p.cwd().is_absolute() {
        bail!("{prefix}.cwd: {:?} is not an absolute path", p.cwd())
    }
    Ok(())
}

/// Absolute rootfs path of the bundle (it must exist).
pub fn rootfs(bundle: &Path, spec: &Spec) -> Result<PathBuf> {
    let root = spec.root().as_ref().expect("validated");
    let p = if root.path().is_absolute() {
        root.path().clone()
    } else {
        bundle.join(root.path())
    };
    match std::fs::metadata(&p) {
        Ok(m) if m.is_dir() => Ok(p),
        Ok(_) => bail!("rootfs {}: not a directory", p.display()),
        Err(e) => bail!("rootfs {}: {e}", p.display()),
    }
}
