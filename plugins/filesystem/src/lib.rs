//! `filesystem`: a device, image file or pseudo filesystem mounted on a mount point (like
//! Pacemaker's Filesystem agent or LifeKeeper's file system kit).
//!
//! * **start** runs `mount -t FSTYPE -o OPTIONS DEVICE MOUNTPOINT`; already mounted there with
//!   this device → success; something else mounted there → error. With `probe`, the new mount
//!   must pass a write/read check before start succeeds.
//! * **monitor** reads the engine's mount table (`/proc/self/mounts`): the device on the mount
//!   point → running (failed when it went read-only although `ro` was not asked for, or when the
//!   probe fails); nothing there → stopped; another device there → failed.
//! * **stop** runs `umount MOUNTPOINT`. A busy mount is never left behind silently: the holders
//!   are found with `fuser -m` and named in the error, or, with `kill_holders`, sent TERM, then
//!   KILL after `kill_grace_ms`, and the unmount retried.
//!
//! An image file as `device` is loop-mounted by mount(8); the mount table then shows
//! `/dev/loopN`, which is matched through `/sys/block/loopN/loop/backing_file`. A `/dev/…`
//! symlink (`/dev/disk/by-uuid/…`) is matched through `readlink -e`.
use std::time::Duration;

use warden_sdk::*;

struct Filesystem;

const MOUNT: &str = "/bin/mount";
const UMOUNT: &str = "/bin/umount";
const FUSER: &str = "/bin/fuser";
const DD: &str = "/bin/dd";
const READLINK: &str = "/bin/readlink";
const MOUNTS: &str = "/proc/self/mounts";
/// Name of the probe file written at the top of the mounted filesystem.
const PROBE_FILE: &str = ".warden-probe";

struct Config {
    device: String,
    mountpoint: String,
    fstype: String,
    options: String,
    probe: bool,
    kill_holders: bool,
    kill_grace: Duration,
    command_timeout: Duration,
}

fn invalid(msg: String) -> AgentError {
    AgentError::InvalidConfig(msg)
}

fn clean_path(what: &str, v: &str) -> Result<String, AgentError> {
    let p = v.trim();
    let trimmed = if p.len() > 1 { p.trim_end_matches('/') } else { p };
    if !trimmed.starts_with('/') || trimmed.split('/').any(|c| c == "..") || trimmed.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(format!("parameter `{what}` must be an absolute path without `..` or spaces, got `{v}`")));
    }
    Ok(trimmed.to_string())
}

impl Config {
    fn from(ctx: &Context) -> Result<Self, AgentError> {
        let device_raw = ctx.require("device")?.trim();
        let device = if device_raw.starts_with('/') {
            clean_path("device", device_raw)?
        } else if !device_raw.starts_with('-') && device_raw.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')) {
            // A pseudo filesystem's source name: tmpfs, none, …
            device_raw.to_string()
        } else {
            return Err(invalid(format!(
                "parameter `device` must be an absolute path (a block device or an image file) or a plain source name like `tmpfs`; got `{device_raw}` (use /dev/disk/by-uuid/… instead of UUID=…)"
            )));
        };
        let mountpoint = clean_path("mountpoint", ctx.require("mountpoint")?)?;
        if mountpoint == "/" {
            return Err(invalid("parameter `mountpoint` must not be `/`".into()));
        }
        let fstype = ctx.param("fstype").map(str::trim).filter(|s| !s.is_empty()).unwrap_or("auto").to_string();
        if fstype.starts_with('-') || !fstype.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')) {
            return Err(invalid(format!("parameter `fstype` must be a filesystem type like ext4, xfs or tmpfs; got `{fstype}`")));
        }
        let options = ctx.param("options").map(str::trim).filter(|s| !s.is_empty()).unwrap_or("defaults").to_string();
        if options.starts_with('-') || options.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid(format!(
                "parameter `options` must be a comma-separated mount option list without spaces; got `{options}`"
            )));
        }
        Ok(Self {
            device,
            mountpoint,
            fstype,
            options,
            probe: ctx.param_bool("probe", false)?,
            kill_holders: ctx.param_bool("kill_holders", false)?,
            kill_grace: Duration::from_millis(ctx.param_u64("kill_grace_ms", 5000)?),
            command_timeout: Duration::from_millis(ctx.param_u64("command_timeout_ms", 30_000)?),
        })
    }

    fn read_only_wanted(&self) -> bool {
        self.options.split(',').any(|o| o == "ro")
    }
}

/// One line of the mount table.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MountEntry {
    source: String,
    target: String,
    fstype: String,
    options: String,
}

/// Undo the octal escapes of /proc/*/mounts (`\040` for a space, `\134` for a backslash, …).
fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_mounts(table: &str) -> Vec<MountEntry> {
    table
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 4).then(|| MountEntry {
                source: unescape(f[0]),
                target: unescape(f[1]),
                fstype: f[2].to_string(),
                options: f[3].to_string(),
            })
        })
        .collect()
}

/// The mounts on `mountpoint`, topmost first (when mounts are stacked, the last one is visible).
fn mounted_at(mountpoint: &str) -> Result<Vec<MountEntry>, AgentError> {
    let table = String::from_utf8_lossy(&fs::read(MOUNTS, 1 << 20)?).into_owned();
    Ok(parse_mounts(&table).into_iter().rev().filter(|e| e.target == mountpoint).collect())
}

/// Is `entry` our device? Handles loop-mounted image files and `/dev` symlinks.
fn is_our_device(cfg: &Config, entry: &MountEntry) -> Result<bool, AgentError> {
    if entry.source == cfg.device {
        return Ok(true);
    }
    if let Some(loop_name) = entry.source.strip_prefix("/dev/") {
        if loop_name.starts_with("loop") && !loop_name.contains('/') && cfg.device.starts_with('/') && !cfg.device.starts_with("/dev/") {
            let backing = format!("/sys/block/{loop_name}/loop/backing_file");
            if fs::exists(&backing)? {
                let file = fs::read_to_string(&backing)?;
                return Ok(file.trim_end_matches('\n') == cfg.device);
            }
            return Ok(false);
        }
        if cfg.device.starts_with("/dev/") {
            let cmd = Command::new(READLINK).args(["-e", cfg.device.as_str()]).timeout(Duration::from_secs(5));
            let out = cmd.run()?;
            return Ok(out.success() && out.stdout.trim_end_matches('\n') == entry.source);
        }
    }
    Ok(false)
}

/// What is on the mount point, from our point of view.
enum Mounted {
    No,
    Ours(MountEntry),
    Other(MountEntry),
}

fn mount_state(cfg: &Config) -> Result<Mounted, AgentError> {
    Ok(match mounted_at(&cfg.mountpoint)?.into_iter().next() {
        None => Mounted::No,
        Some(e) if is_our_device(cfg, &e)? => Mounted::Ours(e),
        Some(e) => Mounted::Other(e),
    })
}

/// Write a small file with fsync, then read it back. Err(reason) when the filesystem does not
/// take writes (read-only, full, I/O errors, hung).
fn probe(ctx: &Context, cfg: &Config) -> Result<Result<(), String>, AgentError> {
    let path = format!("{}/{PROBE_FILE}", cfg.mountpoint);
    let content = format!("warden probe: resource {} node {} epoch {}\n", ctx.resource, ctx.node, ctx.epoch);
    let cmd = Command::new(DD)
        .args([format!("of={path}"), "conv=fsync".into(), "status=none".into()])
        .stdin(content.clone())
        .timeout(cfg.command_timeout);
    let out = cmd.run()?;
    if !out.success() {
        return Ok(Err(format!("probe write `{}` failed ({}): {}", cmd.display(), out.status_text(), out.output_text())));
    }
    let back = fs::read(&path, 4096)?;
    if back != content.as_bytes() {
        return Ok(Err(format!("probe read-back of {path} returned different data ({} bytes)", back.len())));
    }
    Ok(Ok(()))
}

/// Health of a mount that is ours.
fn check(ctx: &Context, cfg: &Config, entry: &MountEntry) -> Result<Result<(), String>, AgentError> {
    if !cfg.read_only_wanted() && entry.options.split(',').any(|o| o == "ro") {
        return Ok(Err(format!(
            "{} on {} is mounted read-only ({}), although `ro` was not asked for: the filesystem probably hit errors",
            entry.source, cfg.mountpoint, entry.options
        )));
    }
    if cfg.probe {
        return probe(ctx, cfg);
    }
    Ok(Ok(()))
}

/// A process that keeps the filesystem busy.
struct Holder {
    pid: u32,
    name: String,
}

/// Processes using the filesystem mounted at the mount point (`fuser -m -M`: only when it is a
/// mount point, never the filesystem that contains it).
fn holders(cfg: &Config) -> Result<Vec<Holder>, AgentError> {
    let cmd = Command::new(FUSER).args(["-m", "-M", cfg.mountpoint.as_str()]).timeout(cfg.command_timeout);
    let out = cmd.run()?;
    // fuser prints the pids on stdout (access letters and messages on stderr); exit 1 = none.
    let pids: Vec<u32> =
        out.stdout.split_whitespace().filter_map(|w| w.trim_end_matches(|c: char| c.is_ascii_alphabetic()).parse().ok()).collect();
    if pids.is_empty() && out.exit_code != Some(1) && !out.success() {
        return Err(fail!("`{}` failed ({}): {}", cmd.display(), out.status_text(), out.output_text()));
    }
    Ok(pids
        .into_iter()
        .map(|pid| {
            let name = fs::read_to_string(&format!("/proc/{pid}/comm")).map(|s| s.trim().to_string()).unwrap_or_else(|_| "?".into());
            Holder { pid, name }
        })
        .collect())
}

fn describe(holders: &[Holder]) -> String {
    holders.iter().map(|h| format!("pid {} ({})", h.pid, h.name)).collect::<Vec<_>>().join(", ")
}

fn wait_no_holders(cfg: &Config, limit: Duration) -> Result<Vec<Holder>, AgentError> {
    let step = Duration::from_millis(200);
    let mut waited = Duration::ZERO;
    loop {
        let h = holders(cfg)?;
        if h.is_empty() || waited >= limit {
            return Ok(h);
        }
        sleep(step);
        waited += step;
    }
}

fn kill_holders(cfg: &Config, signal: &str) -> Result<(), AgentError> {
    let cmd = Command::new(FUSER).args(["-k", signal, "-m", "-M", cfg.mountpoint.as_str()]).timeout(cfg.command_timeout);
    let out = cmd.run()?;
    // Exit 1: nobody left to signal.
    if !out.success() && out.exit_code != Some(1) {
        return Err(fail!("`{}` failed ({}): {}", cmd.display(), out.status_text(), out.output_text()));
    }
    Ok(())
}

fn umount(cfg: &Config) -> Result<ExecOutput, AgentError> {
    Command::new(UMOUNT).arg(cfg.mountpoint.as_str()).timeout(cfg.command_timeout).run()
}

impl Agent for Filesystem {
    fn metadata() -> AgentMetadata {
        let mut m = AgentMetadata::new(
            "filesystem",
            "0.1.0",
            "A filesystem mounted on a mount point; stop never leaves a busy mount behind silently",
        )
        .param(Param::required(
            "device",
            "What to mount: a block device (/dev/sdb1, /dev/disk/by-uuid/…), an image file (loop-mounted), or a source name such as tmpfs",
        ))
        .param(Param::required("mountpoint", "Absolute path of the mount point (an existing directory)"))
        .param(Param::optional("fstype", "auto", "Filesystem type for `mount -t` (ext4, xfs, tmpfs, …)"))
        .param(Param::optional("options", "defaults", "Mount options for `mount -o`, comma-separated"))
        .param(Param::optional("probe", "false", "Also write and read back MOUNTPOINT/.warden-probe (with fsync) in start and monitor"))
        .param(Param::optional(
            "kill_holders",
            "false",
            "On a busy stop, kill the processes using the filesystem (TERM, then KILL) and unmount; otherwise stop fails naming them",
        ))
        .param(Param::optional("kill_grace_ms", "5000", "With kill_holders: how long to wait after TERM before KILL"))
        .param(Param::optional("command_timeout_ms", "30000", "Timeout of each mount, umount, fuser and probe command"));
        m.timeouts.start_ms = 60_000;
        m.timeouts.stop_ms = 60_000;
        m.timeouts.monitor_ms = 40_000;
        m.monitor_interval_ms = 10_000;
        m
    }

    fn validate(ctx: &Context) -> Result<(), AgentError> {
        Config::from(ctx).map(|_| ())
    }

    fn start(ctx: &Context) -> Result<(), AgentError> {
        let cfg = Config::from(ctx)?;
        match mount_state(&cfg)? {
            Mounted::Ours(e) => {
                return match check(ctx, &cfg, &e)? {
                    Ok(()) => {
                        log::info(format!("{} is already mounted on {}", cfg.device, cfg.mountpoint));
                        Ok(())
                    }
                    Err(why) => Err(fail!("{why}")),
                };
            }
            Mounted::Other(e) => {
                return Err(fail!("{} already has {} ({}) mounted, not {}", cfg.mountpoint, e.source, e.fstype, cfg.device))
            }
            Mounted::No => {}
        }
        let cmd = Command::new(MOUNT)
            .args(["-t", cfg.fstype.as_str(), "-o", cfg.options.as_str(), cfg.device.as_str(), cfg.mountpoint.as_str()])
            .timeout(cfg.command_timeout);
        let out = cmd.run()?;
        if !out.success() {
            return Err(fail!("`{}` failed ({}): {}", cmd.display(), out.status_text(), out.output_text()));
        }
        let entry = match mount_state(&cfg)? {
            Mounted::Ours(e) => e,
            Mounted::Other(e) => {
                return Err(fail!(
                    "after `{}`, the mount table shows {} on {}, not {}",
                    cmd.display(),
                    e.source,
                    cfg.mountpoint,
                    cfg.device
                ))
            }
            Mounted::No => return Err(fail!("`{}` succeeded but {} is not in the mount table", cmd.display(), cfg.mountpoint)),
        };
        if let Err(why) = check(ctx, &cfg, &entry)? {
            // Not usable: take it down again, so that a failed start leaves nothing mounted.
            let _ = umount(&cfg);
            return Err(fail!("mounted {} on {}, but {why}", cfg.device, cfg.mountpoint));
        }
        log::info(format!("mounted {} on {} ({}, {})", cfg.device, cfg.mountpoint, entry.fstype, entry.options));
        Ok(())
    }

    fn stop(ctx: &Context) -> Result<(), AgentError> {
        let cfg = Config::from(ctx)?;
        let mut last = String::new();
        for _attempt in 1..=3 {
            match mount_state(&cfg)? {
                Mounted::No => return Ok(()),
                Mounted::Other(e) => {
                    // Someone else's mount: not ours to remove. But if ours is underneath it, we
                    // cannot unmount ours without theirs, and must not call it stopped.
                    for below in mounted_at(&cfg.mountpoint)?.iter().skip(1) {
                        if is_our_device(&cfg, below)? {
                            return Err(fail!(
                                "{} is still mounted on {}, covered by {} mounted on top of it",
                                cfg.device,
                                cfg.mountpoint,
                                e.source
                            ));
                        }
                    }
                    log::warn(format!("{} has {} mounted, not {}; nothing of ours to unmount", cfg.mountpoint, e.source, cfg.device));
                    return Ok(());
                }
                Mounted::Ours(_) => {}
            }
            let out = umount(&cfg)?;
            if out.success() {
                continue; // the next round confirms it is gone
            }
            last = format!("`umount {}` failed ({}): {}", cfg.mountpoint, out.status_text(), out.output_text());
            let busy = holders(&cfg)?;
            if busy.is_empty() {
                sleep(Duration::from_millis(500));
                continue;
            }
            if !cfg.kill_holders {
                return Err(fail!(
                    "cannot unmount {}: it is busy, held by {}; stop those processes, or set kill_holders=true to have them killed",
                    cfg.mountpoint,
                    describe(&busy)
                ));
            }
            log::warn(format!("{} is busy, held by {}; sending TERM", cfg.mountpoint, describe(&busy)));
            kill_holders(&cfg, "-TERM")?;
            let left = wait_no_holders(&cfg, cfg.kill_grace)?;
            if !left.is_empty() {
                log::warn(format!("{} still held by {} after TERM; sending KILL", cfg.mountpoint, describe(&left)));
                kill_holders(&cfg, "-KILL")?;
                let left = wait_no_holders(&cfg, Duration::from_secs(5))?;
                if !left.is_empty() {
                    last = format!("still held by {} after KILL", describe(&left));
                }
            }
        }
        match mount_state(&cfg)? {
            Mounted::Ours(_) => Err(fail!("{} is still mounted: {last}", cfg.mountpoint)),
            _ => Ok(()),
        }
    }

    fn monitor(ctx: &Context) -> Result<Health, AgentError> {
        let cfg = Config::from(ctx)?;
        Ok(match mount_state(&cfg)? {
            Mounted::No => Health::Stopped,
            Mounted::Other(e) => Health::Failed(format!("{} has {} ({}) mounted, not {}", cfg.mountpoint, e.source, e.fstype, cfg.device)),
            Mounted::Ours(e) => match check(ctx, &cfg, &e)? {
                Ok(()) => Health::Running,
                Err(why) => Health::Failed(why),
            },
        })
    }
}

export_agent!(Filesystem);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_unescapes_the_mount_table() {
        let t = "tmpfs /tmp/a\\040b tmpfs rw,relatime 0 0\n/dev/loop3 /srv/data ext4 ro,relatime 0 0\n";
        let m = parse_mounts(t);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].target, "/tmp/a b");
        assert_eq!(m[1].source, "/dev/loop3");
        assert_eq!(m[1].options, "ro,relatime");
        assert_eq!(unescape("a\\134b\\011"), "a\\b\t");
        assert_eq!(unescape("trailing\\04"), "trailing\\04");
    }
}
