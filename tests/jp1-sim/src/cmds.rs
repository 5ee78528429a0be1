//! The JP1 commands, by name. Exit codes follow jp1.md: 0 all running, 1 command error, 4 some
//! running, 8 all stopped, 12 transient error (retry).

use std::path::Path;
use std::time::{Duration, Instant};

use crate::lhost::{resolve_name, AjsRole, Lhost, Phase, Product, Role};
use crate::procs::{self, Snapshot};

/// Every simulated command: its name and its directory under the install prefix.
pub const COMMANDS: &[(&str, &str, Product)] = &[
    ("jbs_start.cluster", "etc/opt/jp1base", Product::Base),
    ("jbs_stop.cluster", "etc/opt/jp1base", Product::Base),
    ("jbs_killall.cluster", "etc/opt/jp1base", Product::Base),
    ("jbs_spmd_status", "opt/jp1base/bin", Product::Base),
    ("jevstat", "opt/jp1base/bin", Product::Base),
    ("jajs_start.cluster", "etc/opt/jp1ajs2", Product::Ajs),
    ("jajs_stop.cluster", "etc/opt/jp1ajs2", Product::Ajs),
    ("jajs_killall.cluster", "etc/opt/jp1ajs2", Product::Ajs),
    ("jajs_spmd_status", "opt/jp1ajs2/bin", Product::Ajs),
    ("ajsqlstatus", "opt/jp1ajs2/bin", Product::Ajs),
    ("jajs_status", "opt/jp1ajs2/bin", Product::Ajs),
];

pub fn find(name: &str) -> Option<&'static (&'static str, &'static str, Product)> {
    COMMANDS.iter().find(|c| c.0 == name)
}

/// The exit codes.
pub const OK: i32 = 0;
pub const ERROR: i32 = 1;
pub const SOME: i32 = 4;
pub const NONE: i32 = 8;
pub const TRANSIENT: i32 = 12;

/// How long `jbs_start.cluster` waits for JP1/Base to come up, and `*_stop.cluster` for the
/// processes to end (the real commands wait 60 s).
const START_WAIT: Duration = Duration::from_secs(60);
const STOP_WAIT: Duration = Duration::from_secs(60);

/// Parsed arguments: `-h <lhost>`, `-t <seconds>`, flags, and positional arguments.
struct Args {
    host: Option<String>,
    timeout: Option<u64>,
    positional: Vec<String>,
}

fn parse(cmd: &str, args: &[String], flags: &[&str], t_range: (u64, u64)) -> Result<Args, String> {
    let mut a = Args { host: None, timeout: None, positional: Vec::new() };
    let mut it = args.iter();
    while let Some(x) = it.next() {
        match x.as_str() {
            "-h" => a.host = Some(it.next().ok_or_else(|| format!("{cmd}: -h needs a logical host name"))?.clone()),
            "-t" => {
                let v = it.next().ok_or_else(|| format!("{cmd}: -t needs a number of seconds"))?;
                let n: u64 = v.parse().map_err(|_| format!("{cmd}: -t {v}: not a number"))?;
                if n < t_range.0 || n > t_range.1 {
                    return Err(format!("{cmd}: -t {n}: must be {}-{}", t_range.0, t_range.1));
                }
                a.timeout = Some(n);
            }
            f if flags.contains(&f) => {}
            f if f.starts_with('-') => return Err(format!("{cmd}: unknown option {f}")),
            _ => a.positional.push(x.clone()),
        }
    }
    Ok(a)
}

pub fn run(name: &str, prefix: &Path, args: &[String]) -> i32 {
    let result = match name {
        "jbs_start.cluster" => cluster(name, prefix, args, start, Product::Base),
        "jbs_stop.cluster" => cluster(name, prefix, args, stop, Product::Base),
        "jbs_killall.cluster" => cluster(name, prefix, args, killall, Product::Base),
        "jajs_start.cluster" => cluster(name, prefix, args, start, Product::Ajs),
        "jajs_stop.cluster" => cluster(name, prefix, args, stop, Product::Ajs),
        "jajs_killall.cluster" => cluster(name, prefix, args, killall, Product::Ajs),
        "jbs_spmd_status" => status(name, prefix, args, (0, 32767), Product::Base, &[Role::Spmd, Role::Listed]),
        "jajs_spmd_status" => status(name, prefix, args, (0, 32767), Product::Ajs, &[Role::Spmd, Role::Listed]),
        "jajs_status" => status(name, prefix, args, (0, 32767), Product::Ajs, &[Role::Spmd, Role::Listed, Role::Scheduler]),
        "jevstat" => jevstat(name, prefix, args),
        "ajsqlstatus" => ajsqlstatus(name, prefix, args),
        _ => Err(format!("jp1-sim: unknown command {name}")),
    };
    match result {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("{msg}");
            ERROR
        }
    }
}

fn lookup(cmd: &str, prefix: &Path, name: &str, p: Product) -> Result<Lhost, String> {
    let l = Lhost::lookup(prefix, name).map_err(|e| format!("{cmd}: {e}"))?;
    if p == Product::Ajs && l.ajs == AjsRole::None {
        return Err(format!("{cmd}: JP1/AJS3 is not set up on the logical host `{name}`"));
    }
    let _ = std::fs::create_dir_all(l.state_dir(p));
    Ok(l)
}

/// `*.cluster [lhost]`: the logical host is the first argument (else JP1_HOSTNAME, else the
/// physical host name).
fn cluster(
    cmd: &str,
    prefix: &Path,
    args: &[String],
    f: fn(&str, &Lhost, Product) -> Result<i32, String>,
    p: Product,
) -> Result<i32, String> {
    let a = parse(cmd, args, &["-HA"], (0, 32767))?;
    let name = resolve_name(a.host.or_else(|| a.positional.first().cloned()));
    let l = lookup(cmd, prefix, &name, p)?;
    f(cmd, &l, p)
}

fn start(cmd: &str, l: &Lhost, p: Product) -> Result<i32, String> {
    if p == Product::Ajs {
        let base = Snapshot::take(l, Product::Base);
        if !(base.all_alive() && base.phase == Phase::Running) {
            return Err(format!("{cmd}: JP1/Base is not running on the logical host `{}`: start JP1/Base first", l.name));
        }
    }
    if let Some(mode) = l.fault(&format!("{}.start-fail", p.key())) {
        if mode != "silent" {
            return Err(format!(
                "{cmd}: {} could not start on the logical host `{}` (jp1-sim fault {}.start-fail)",
                p.display(),
                l.name,
                p.key()
            ));
        }
    }
    let snap = Snapshot::take(l, p);
    if snap.all_alive() && snap.phase == Phase::Running {
        println!("{cmd}: {} is already running on the logical host `{}`", p.display(), l.name);
        return Ok(OK);
    }
    if snap.phase == Phase::Starting && snap.spmd().is_some_and(|s| s.pid.is_some()) && p == Product::Ajs {
        println!("{cmd}: {} startup is in progress on the logical host `{}`", p.display(), l.name);
        return Ok(OK);
    }
    if snap.any_alive() {
        let left: Vec<&str> = snap.procs.iter().filter(|s| s.pid.is_some()).map(|s| s.spec.name.as_str()).collect();
        return Err(format!(
            "{cmd}: processes of {} remain on the logical host `{}` ({}); run the killall command first",
            p.display(),
            l.name,
            left.join(", ")
        ));
    }

    let _ = std::fs::remove_dir_all(l.pid_dir(p));
    l.clear_abnormal(p);
    l.set_phase(p, Phase::Starting);
    let spmd = l.specs(p)[0].name.clone();
    if let Err(e) = procs::spawn_spmd(l, p, &spmd) {
        l.set_phase(p, Phase::Stopped);
        return Err(format!("{cmd}: cannot start {spmd}: {e}"));
    }
    let up = || Snapshot::take(l, p).spmd().is_some_and(|s| s.pid.is_some());
    if !procs::wait_for(Duration::from_secs(5), up) {
        return Err(format!("{cmd}: {spmd} did not start"));
    }
    match p {
        Product::Ajs => {
            // Like the real command after its wait: return while the startup continues.
            println!("{cmd}: {} startup on the logical host `{}` has begun; check it with jajs_spmd_status", p.display(), l.name);
            Ok(OK)
        }
        Product::Base => {
            let start = Instant::now();
            while start.elapsed() < START_WAIT {
                let s = Snapshot::take(l, p);
                if s.all_alive() && s.phase == Phase::Running {
                    println!("{cmd}: {} started on the logical host `{}`", p.display(), l.name);
                    return Ok(OK);
                }
                if !s.any_alive() {
                    let why = l.abnormal(p).unwrap_or_else(|| "the process manager ended".into());
                    return Err(format!("{cmd}: {} startup failed on the logical host `{}`: {why}", p.display(), l.name));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(format!("{cmd}: {} did not come up within {} s", p.display(), START_WAIT.as_secs()))
        }
    }
}

fn stop(cmd: &str, l: &Lhost, p: Product) -> Result<i32, String> {
    if l.fault(&format!("{}.stop-fail", p.key())).is_some() {
        return Err(format!(
            "{cmd}: {} could not stop on the logical host `{}` (jp1-sim fault {}.stop-fail)",
            p.display(),
            l.name,
            p.key()
        ));
    }
    let snap = Snapshot::take(l, p);
    if !snap.any_alive() {
        l.set_phase(p, Phase::Stopped);
        l.clear_abnormal(p);
        println!("{cmd}: {} is not running on the logical host `{}`", p.display(), l.name);
        return Ok(OK);
    }
    l.set_phase(p, Phase::Stopping);
    // Children first, then the process manager.
    for s in snap.procs.iter().rev() {
        if let Some(pid) = s.pid {
            procs::signal(pid, libc::SIGTERM);
        }
    }
    if procs::wait_for(STOP_WAIT, || !Snapshot::take(l, p).any_alive()) {
        l.set_phase(p, Phase::Stopped);
        l.clear_abnormal(p);
        println!("{cmd}: {} stopped on the logical host `{}`", p.display(), l.name);
        Ok(OK)
    } else {
        Err(format!("{cmd}: {} processes did not end within {} s", p.display(), STOP_WAIT.as_secs()))
    }
}

fn killall(cmd: &str, l: &Lhost, p: Product) -> Result<i32, String> {
    l.set_phase(p, Phase::Killed);
    let dir = l.exe_dir(p);
    let mut n = 0;
    for pid in procs::scan_under(&dir) {
        procs::signal(pid, libc::SIGKILL);
        n += 1;
    }
    let gone = procs::wait_for(Duration::from_secs(10), || procs::scan_under(&dir).is_empty());
    l.clear_abnormal(p);
    if gone {
        println!("{cmd}: killed {n} process(es) of {} on the logical host `{}`", p.display(), l.name);
        Ok(OK)
    } else {
        Err(format!("{cmd}: processes of {} remain on the logical host `{}`", p.display(), l.name))
    }
}

/// Fault switches every status command honours, in order: `<cmd>.hang` (wait until `-t`
/// expires, then exit 12; `-t 0` waits forever) and `<cmd>.transient12` (exit 12, N times).
fn status_faults(cmd: &str, l: &Lhost, timeout: u64) -> Option<i32> {
    if l.fault(&format!("{cmd}.hang")).is_some() {
        let start = Instant::now();
        while timeout == 0 || start.elapsed() < Duration::from_secs(timeout) {
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("{cmd}: no response from the processes of the logical host `{}` within {timeout} s", l.name);
        return Some(TRANSIENT);
    }
    if l.take_count_fault(&format!("{cmd}.transient12")) {
        eprintln!("{cmd}: a transient error occurred while getting the status of the logical host `{}` (jp1-sim fault); retry", l.name);
        return Some(TRANSIENT);
    }
    None
}

fn abnormal_note(l: &Lhost, p: Product, snap: &Snapshot) -> String {
    if snap.phase.expects_processes() {
        let why = l.abnormal(p).unwrap_or_else(|| "the processes ended without a stop command".into());
        format!("\n{} ended abnormally: {why}", p.display())
    } else {
        String::new()
    }
}

/// `jbs_spmd_status`, `jajs_spmd_status`, `jajs_status`: `-h lhost [-t s]`.
fn status(cmd: &str, prefix: &Path, args: &[String], t_range: (u64, u64), p: Product, roles: &[Role]) -> Result<i32, String> {
    let a = parse(cmd, args, &["-s", "-a"], t_range)?;
    if let Some(x) = a.positional.first() {
        return Err(format!("{cmd}: unexpected argument {x} (use -h <logical host>)"));
    }
    let l = lookup(cmd, prefix, &resolve_name(a.host), p)?;
    if let Some(code) = status_faults(cmd, &l, a.timeout.unwrap_or(60)) {
        return Ok(code);
    }
    let snap = Snapshot::take(&l, p);
    let considered: Vec<_> = snap.with_roles(roles).collect();
    let running: Vec<&str> = considered.iter().filter(|s| s.pid.is_some()).map(|s| s.spec.name.as_str()).collect();
    // Like the real command, list the managed processes, not the process manager itself.
    let shown: Vec<&str> =
        considered.iter().filter(|s| s.pid.is_some() && s.spec.role != Role::Spmd).map(|s| s.spec.name.as_str()).collect();
    let missing: Vec<&str> = considered.iter().filter(|s| s.pid.is_none()).map(|s| s.spec.name.as_str()).collect();
    let list = |v: &[&str]| v.iter().map(|n| format!("{n}\n")).collect::<String>();
    if running.is_empty() {
        println!("{cmd}: all processes of {} on the logical host `{}` are stopped{}", p.display(), l.name, abnormal_note(&l, p, &snap));
        return Ok(NONE);
    }
    if snap.phase == Phase::Starting {
        print!("{}", list(&shown));
        println!("{cmd}: {} startup is in progress on the logical host `{}`", p.display(), l.name);
        return Ok(SOME);
    }
    if missing.is_empty() {
        print!("{}", list(&shown));
        return Ok(OK);
    }
    print!("{}", list(&shown));
    println!("{cmd}: some processes of {} on the logical host `{}` are not running: {}", p.display(), l.name, missing.join(", "));
    Ok(SOME)
}

/// `jevstat [lhost] [-t s]`: the event service (jevservice) of JP1/Base.
fn jevstat(cmd: &str, prefix: &Path, args: &[String]) -> Result<i32, String> {
    let a = parse(cmd, args, &[], (1, 32767))?;
    let l = lookup(cmd, prefix, &resolve_name(a.host.or_else(|| a.positional.first().cloned())), Product::Base)?;
    if let Some(code) = status_faults(cmd, &l, a.timeout.unwrap_or(60)) {
        return Ok(code);
    }
    let snap = Snapshot::take(&l, Product::Base);
    let ev: Vec<_> = snap.with_roles(&[Role::Event]).collect();
    if snap.phase == Phase::Starting && snap.any_alive() {
        eprintln!("KAJP1706-E The event server is starting on the logical host `{}` (retry after a few seconds)", l.name);
        return Ok(TRANSIENT);
    }
    if ev.iter().all(|s| s.pid.is_some()) && !ev.is_empty() {
        for s in &ev {
            println!("{}", s.spec.name);
        }
        return Ok(OK);
    }
    if ev.iter().any(|s| s.pid.is_some()) {
        println!("{cmd}: some event service processes of the logical host `{}` are not running", l.name);
        return Ok(SOME);
    }
    println!("{cmd}: the event service of the logical host `{}` is stopped{}", l.name, abnormal_note(&l, Product::Base, &snap));
    Ok(NONE)
}

/// `ajsqlstatus -h lhost`: one line per queueless service, `active` or `inactive`.
fn ajsqlstatus(cmd: &str, prefix: &Path, args: &[String]) -> Result<i32, String> {
    let a = parse(cmd, args, &[], (0, 32767))?;
    let l = lookup(cmd, prefix, &resolve_name(a.host), Product::Ajs)?;
    if let Some(code) = status_faults(cmd, &l, a.timeout.unwrap_or(60)) {
        return Ok(code);
    }
    let snap = Snapshot::take(&l, Product::Ajs);
    let ready = snap.phase == Phase::Running;
    let state = |n: &str| {
        if ready && snap.procs.iter().any(|s| s.spec.name == n && s.pid.is_some()) {
            "active"
        } else {
            "inactive"
        }
    };
    println!("Queueless agent service : {}", state("ajsqlagtd"));
    if l.ajs == AjsRole::Manager {
        println!("Queueless file transfer service : {}", state("ajsqlftpd"));
    }
    Ok(OK)
}
