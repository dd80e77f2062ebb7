//! The spec's seccomp profile through libseccomp.

use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};
use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction};

use crate::error::{bail, Error, Result};

fn name<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn action(a: LinuxSeccompAction, errno: Option<u32>) -> Result<ScmpAction> {
    let eperm = libc::EPERM as u32;
    Ok(match name(&a).as_str() {
        "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => ScmpAction::KillThread,
        "SCMP_ACT_KILL_PROCESS" => ScmpAction::KillProcess,
        "SCMP_ACT_TRAP" => ScmpAction::Trap,
        "SCMP_ACT_ERRNO" => ScmpAction::Errno(errno.unwrap_or(eperm) as i32),
        "SCMP_ACT_TRACE" => ScmpAction::Trace(errno.unwrap_or(eperm) as u16),
        "SCMP_ACT_ALLOW" => ScmpAction::Allow,
        "SCMP_ACT_LOG" => ScmpAction::Log,
        other => bail!("seccomp: action {other} is not supported"),
    })
}

fn op(o: &str, mask: u64) -> Result<ScmpCompareOp> {
    Ok(match o {
        "SCMP_CMP_NE" => ScmpCompareOp::NotEqual,
        "SCMP_CMP_LT" => ScmpCompareOp::Less,
        "SCMP_CMP_LE" => ScmpCompareOp::LessOrEqual,
        "SCMP_CMP_EQ" => ScmpCompareOp::Equal,
        "SCMP_CMP_GE" => ScmpCompareOp::GreaterEqual,
        "SCMP_CMP_GT" => ScmpCompareOp::Greater,
        "SCMP_CMP_MASKED_EQ" => ScmpCompareOp::MaskedEqual(mask),
        other => bail!("seccomp: operator {other} is not supported"),
    })
}

fn err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::msg(format!("seccomp: {what}: {e}"))
}

/// Build the filter (done before anything is dropped, so errors surface in
/// `create`).
pub fn build(s: &LinuxSeccomp) -> Result<ScmpFilterContext> {
    let def = action(s.default_action(), s.default_errno_ret())?;
    let mut f = ScmpFilterContext::new(def).map_err(|e| err("new filter", e))?;
    // The caller sets no_new_privs itself when the spec asks for it.
    f.set_ctl_nnp(false).map_err(|e| err("nnp attribute", e))?;
    for a in s.architectures().iter().flatten() {
        if let Ok(arch) = name(a).parse::<ScmpArch>() {
            if arch != ScmpArch::native() {
                let _ = f.add_arch(arch);
            }
        }
    }
    for sc in s.syscalls().iter().flatten() {
        let act = action(sc.action(), sc.errno_ret())?;
        if act == def {
            continue;
        }
        let mut conds = Vec::new();
        for a in sc.args().iter().flatten() {
            let o = op(&name(&a.op()), a.value())?;
            let datum = if name(&a.op()) == "SCMP_CMP_MASKED_EQ" {
                a.value_two().unwrap_or(0)
            } else {
                a.value()
            };
            conds.push(ScmpArgCompare::new(a.index() as u32, o, datum));
        }
        for n in sc.names() {
            // Names this libseccomp does not know are skipped, as runc does.
            let Ok(nr) = ScmpSyscall::from_name(n) else {
                continue;
            };
            let r = if conds.is_empty() {
                f.add_rule(act, nr)
            } else {
                f.add_rule_conditional(act, nr, &conds)
            };
            r.map_err(|e| err(&format!("rule for {n}"), e))?;
        }
    }
    Ok(f)
}

pub fn load(f: &ScmpFilterContext) -> Result<()> {
    f.load().map_err(|e| err("load", e))
}
