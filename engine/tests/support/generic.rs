//! Helpers for the generic agent's tests (t21): LifeKeeper-style scripts managing a real detached
//! process, small OCF agents, and the real Debian `resource-agents` Dummy.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use warden::plugin::{CallContext, Plugin};

use crate::support::caps;

/// Debian's `ocf:heartbeat:Dummy` (package `resource-agents`, installed by `.ci/run`).
pub const DUMMY: &str = "/usr/lib/ocf/resource.d/heartbeat/Dummy";

pub fn dummy() -> &'static str {
    assert!(Path::new(DUMMY).exists(), "{DUMMY} is missing: `apt-get install -y resource-agents` (CI's .ci/run installs it)");
    DUMMY
}

/// Write an executable script. The write happens in a child process (`sh -c 'cat > …'`), so no
/// writable descriptor of it ever exists in this multi-threaded test process, where a concurrent
/// fork could inherit it and make exec fail with ETXTBSY ("text file busy").
pub fn write_script(path: &Path, body: &str) -> String {
    let mut child =
        Command::new("/bin/sh").args(["-c", "cat > \"$1\" && chmod 755 \"$1\"", "sh"]).arg(path).stdin(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success(), "writing {}", path.display());
    path.display().to_string()
}

/// Is `pid` a live process? A zombie (`Z`) or dead (`X`) process is not: PID 1 reaps orphans
/// slowly on these machines.
pub fn alive(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat.rsplit(')').next().and_then(|r| r.trim().chars().next());
    !matches!(state, Some('Z') | Some('X') | None)
}

pub fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// A call context for resource `resource` on node `node-a`, with the plugin's defaults applied.
pub fn call_ctx(plugin: &Plugin, resource: &str, params: &[(&str, &str)]) -> CallContext {
    let given: BTreeMap<String, String> = params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let params = plugin.metadata.resolve_params(&given).unwrap_or_else(|e| panic!("resolve params: {e}"));
    CallContext { resource: resource.into(), node: "node-a".into(), epoch: 3, params }
}

/// A LifeKeeper Generic ARK resource: restore/remove/quickCheck/recover scripts in a temporary
/// directory managing a real detached daemon with a pid file. Every call is appended to
/// `calls.log` as `<script> <args>|<LK_APP_INFO>`. Dropping it kills the daemon (by pid).
pub struct LkApp {
    pub dir: tempfile::TempDir,
    pub pidfile: PathBuf,
    pub calls: PathBuf,
    pub restore: String,
    pub remove: String,
    pub quickcheck: String,
    pub recover: String,
    pub daemon: String,
}

impl LkApp {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        let p = |n: &str| dir.path().join(n);
        write_script(
            &p("lib.sh"),
            &format!(
                r#"D={d}
PIDFILE=$D/app.pid
echo "$(basename "$0") $*|$LK_APP_INFO" >> $D/calls.log
# Live when the pid file names a process that is neither a zombie nor dead.
alive() {{
    pid=$(cat $PIDFILE 2>/dev/null) || return 1
    st=$(sed 's/.*) //' /proc/$pid/stat 2>/dev/null | cut -c1)
    [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}}
"#
            ),
        );
        let daemon = write_script(&p("daemon.sh"), "#!/bin/sh\n# the protected application\nwhile :; do sleep 1; done\n");
        let restore = write_script(
            &p("restore"),
            &format!(
                r#"#!/bin/sh
. {d}/lib.sh
if [ -f $D/fail-restore ]; then echo "restore refused: the fail switch is set" >&2; exit 3; fi
alive && exit 0     # already running: success, as LifeKeeper requires
setsid {daemon} </dev/null >/dev/null 2>&1 &
echo $! > $PIDFILE
i=0; until alive; do i=$((i+1)); [ $i -gt 50 ] && exit 1; sleep 0.1; done
exit 0
"#
            ),
        );
        let remove = write_script(
            &p("remove"),
            &format!(
                r#"#!/bin/sh
. {d}/lib.sh
if alive; then
    kill $pid
    i=0; while alive && [ $i -lt 50 ]; do i=$((i+1)); sleep 0.1; done
    alive && kill -9 $pid
fi
rm -f $PIDFILE
exit 0
"#
            ),
        );
        let quickcheck = write_script(
            &p("quickCheck"),
            &format!(
                r#"#!/bin/sh
. {d}/lib.sh
alive || {{ echo "application not running (pid file $PIDFILE)"; exit 1; }}
exit 0
"#
            ),
        );
        let recover = write_script(
            &p("recover"),
            &format!(
                r#"#!/bin/sh
. {d}/lib.sh
{d}/remove "$@" && {d}/restore "$@"
"#
            ),
        );
        LkApp { pidfile: p("app.pid"), calls: p("calls.log"), restore, remove, quickcheck, recover, daemon, dir }
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// The operator's grants: run the four scripts, read (stat) them.
    pub fn grants(&self) -> warden_manifest::Capabilities {
        let d = self.dir.path().display();
        caps(&format!(
            r#"
exec = [{{ program = "{d}/*" }}]
read = ["{d}/"]
env = ["LK*", "LANG"]
"#
        ))
    }

    pub fn pid(&self) -> Option<u32> {
        read_pid(&self.pidfile)
    }

    pub fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(&self.calls).unwrap_or_default().lines().map(str::to_string).collect()
    }
}

impl Drop for LkApp {
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            if alive(pid) {
                let _ = Command::new("/bin/kill").args(["-9", &pid.to_string()]).status();
            }
        }
    }
}

/// Minimal OCF meta-data for the test agents; `needed` is a required parameter when asked.
pub fn meta_data_xml(required_param: Option<&str>) -> String {
    let required = required_param
        .map(|n| {
            format!(
                r#"<parameter name="{n}" unique="0" required="1">
<shortdesc lang="en">needed</shortdesc><content type="string"/>
</parameter>"#
            )
        })
        .unwrap_or_default();
    format!(
        r#"<?xml version="1.0"?>
<!DOCTYPE resource-agent SYSTEM "ra-api-1.dtd">
<resource-agent name="test" version="1.0">
<version>1.0</version>
<shortdesc lang="en">test agent</shortdesc>
<parameters>
{required}
<parameter name="rc" unique="0">
<shortdesc lang="en">exit code to return</shortdesc>
<content type="integer" default="0"/>
</parameter>
</parameters>
<actions>
<action name="start" timeout="20s"/>
<action name="stop" timeout="20s"/>
<action name="monitor" timeout="20s" interval="10s"/>
<action name="meta-data" timeout="5s"/>
<action name="validate-all" timeout="20s"/>
</actions>
</resource-agent>
"#
    )
}

/// An OCF agent that exits with `$OCF_RESKEY_rc` for every action but meta-data, giving
/// `code N` as its exit reason; `rc=signal` makes it kill itself with SIGKILL.
pub fn exit_code_agent(dir: &Path) -> String {
    write_script(
        &dir.join("rc-agent"),
        &format!(
            r#"#!/bin/sh
case "$1" in
meta-data) cat <<'END'
{}END
    exit 0;;
esac
if [ "$OCF_RESKEY_rc" = signal ]; then kill -9 $$; fi
echo "ocf-exit-reason:code $OCF_RESKEY_rc" >&2
exit $OCF_RESKEY_rc
"#,
            meta_data_xml(None)
        ),
    )
}

/// An OCF agent that records its argument and environment into `<dir>/<action>.env` and succeeds.
/// Its meta-data declares the required parameter `needed`; with `OCF_RESKEY_meta=garbage` it
/// prints no XML.
pub fn env_agent(dir: &Path) -> String {
    let d = dir.display();
    write_script(
        &dir.join("env-agent"),
        &format!(
            r#"#!/bin/sh
env > {d}/"$1".env
case "$1" in
meta-data)
    if [ "$OCF_RESKEY_meta" = garbage ]; then echo "usage: env-agent start|stop"; exit 0; fi
    cat <<'END'
{}END
    exit 0;;
esac
exit 0
"#,
            meta_data_xml(Some("needed"))
        ),
    )
}

/// `NAME=value` lines of a recorded environment.
pub fn read_env(path: &Path) -> BTreeMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect()
}
