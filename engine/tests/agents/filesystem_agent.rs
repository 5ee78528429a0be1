//! The `filesystem` agent through the real host, with a loop-mounted ext4 image and tmpfs. Each
//! test re-runs itself in a private mount namespace (support/mountns.rs), so its mounts never
//! leak into the machine, even when it fails.

use crate::{mountns, support};
use std::process::{Child, Command};
use std::time::Duration;

use mountns::{in_private_mount_ns, mounts_at, Unmount};
use support::*;
use warden::plugin::{AgentFailure, CallContext, Health, Limits};

const T: Option<Duration> = Some(Duration::from_secs(60));

fn grants(device: &str, mp: &str) -> warden_manifest::Capabilities {
    caps(&format!(
        r#"
exec = [
    {{ program = "/bin/mount", args = ["-t", "*", "-o", "*", "{device}", "{mp}"] }},
    {{ program = "/bin/umount", args = ["{mp}"] }},
    {{ program = "/bin/fuser", args = ["**", "{mp}"] }},
    {{ program = "/bin/dd", args = ["of={mp}/.warden-probe", "conv=fsync", "status=none"] }},
]
read = [
    "/proc/self/mounts", "/proc/*/mounts", "/proc/*/comm",
    "/sys/block/loop*/loop/backing_file", "/sys/devices/virtual/block/loop*/loop/backing_file",
    "{mp}/.warden-probe",
]
"#
    ))
}

fn sh(cmd: &str) {
    let out = Command::new("/bin/sh").args(["-c", cmd]).output().unwrap();
    assert!(out.status.success(), "`{cmd}` failed: {}", String::from_utf8_lossy(&out.stderr));
}

fn is_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    stat.rsplit(')').next().and_then(|r| r.trim().chars().next()).is_some_and(|s| s != 'Z' && s != 'X')
}

/// A process of this test with its working directory inside the mount; killed (by pid) and
/// reaped when dropped.
struct Holder(Child);

impl Holder {
    fn spawn(cwd: &str, script: &str) -> Self {
        let child = Command::new("/bin/sh").args(["-c", script]).current_dir(cwd).spawn().unwrap();
        Holder(child)
    }
    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn params(plugin: &warden::plugin::Plugin, p: &[(&str, &str)]) -> CallContext {
    CallContext { params: plugin.metadata.resolve_params(&ctx(p).params).unwrap(), ..ctx(&[]) }
}

#[tokio::test]
async fn ext4_image_is_mounted_monitored_and_unmounted() {
    if !in_private_mount_ns("filesystem_agent::ext4_image_is_mounted_monitored_and_unmounted") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img").display().to_string();
    let mp = dir.path().join("mnt").display().to_string();
    std::fs::create_dir(&mp).unwrap();
    std::fs::File::create(&img).unwrap().set_len(16 << 20).unwrap();
    sh(&format!("/sbin/mkfs.ext4 -F -q {img}"));
    let _unmount = Unmount(mp.clone());

    let plugin = load(&host(), &built_plugin("filesystem")).await;
    assert_eq!(plugin.name(), "filesystem");
    let mut inst = plugin.instance("data", grants(&img, &mp), Limits::default());
    let c = params(&plugin, &[("device", &img), ("mountpoint", &mp), ("fstype", "ext4"), ("options", "rw,noatime")]);

    inst.validate(&c, T).await.unwrap();
    assert_eq!(inst.monitor(&c, T).await.unwrap(), Health::Stopped);
    inst.start(&c, T).await.unwrap();
    let m = mounts_at(&mp);
    assert_eq!(m.len(), 1, "{m:?}");
    assert!(m[0].0.starts_with("/dev/loop") && m[0].2 == "ext4" && m[0].3.contains("noatime"), "{m:?}");
    // Running: the agent matched /dev/loopN back to the image file.
    assert_eq!(inst.monitor(&c, T).await.unwrap(), Health::Running);
    inst.start(&c, T).await.expect("start is idempotent");
    assert_eq!(mounts_at(&mp).len(), 1, "no second mount on top");

    // The write/read probe.
    let probing = params(&plugin, &[("device", &img), ("mountpoint", &mp), ("fstype", "ext4"), ("probe", "true")]);
    assert_eq!(inst.monitor(&probing, T).await.unwrap(), Health::Running);
    let written = std::fs::read_to_string(format!("{mp}/.warden-probe")).unwrap();
    assert!(written.contains("warden probe") && written.contains("epoch 7"), "{written}");

    // Gone read-only behind the agent's back (as ext4 does with errors=remount-ro): failed.
    sh(&format!("/bin/mount -o remount,ro {mp}"));
    let h = inst.monitor(&c, T).await.unwrap();
    assert!(matches!(&h, Health::Failed(r) if r.contains("read-only")), "{h:?}");
    let h = inst.monitor(&probing, T).await.unwrap();
    assert!(matches!(&h, Health::Failed(_)), "{h:?}");
    sh(&format!("/bin/mount -o remount,rw {mp}"));
    assert_eq!(inst.monitor(&probing, T).await.unwrap(), Health::Running);

    inst.stop(&c, T).await.unwrap();
    assert!(mounts_at(&mp).is_empty(), "{:?}", mounts_at(&mp));
    assert_eq!(inst.monitor(&c, T).await.unwrap(), Health::Stopped);
    inst.stop(&c, T).await.expect("stopping a stopped filesystem succeeds");

    // Something else on the mount point: start refuses, monitor fails, stop leaves it alone.
    sh(&format!("/bin/mount -t tmpfs -o size=1m othersrc {mp}"));
    let err = inst.start(&c, T).await.unwrap_err();
    assert!(matches!(err.agent_failure(), Some(AgentFailure::Failed(m)) if m.contains("othersrc")), "{err}");
    assert!(matches!(inst.monitor(&c, T).await.unwrap(), Health::Failed(r) if r.contains("othersrc")));
    inst.stop(&c, T).await.unwrap();
    assert_eq!(mounts_at(&mp).len(), 1, "someone else's mount is not ours to remove");
    sh(&format!("/bin/umount {mp}"));

    // Ours covered by someone else's: stop must not call it stopped.
    inst.start(&c, T).await.unwrap();
    sh(&format!("/bin/mount -t tmpfs -o size=1m coversrc {mp}"));
    let err = inst.stop(&c, T).await.unwrap_err();
    assert!(matches!(err.agent_failure(), Some(AgentFailure::Failed(m)) if m.contains("covered")), "{err}");
    sh(&format!("/bin/umount {mp}"));
    inst.stop(&c, T).await.unwrap();
    assert!(mounts_at(&mp).is_empty());

    // Without grants: access denied.
    let mut denied = plugin.instance("data", caps(""), Limits::default());
    let err = denied.monitor(&c, T).await.unwrap_err();
    assert!(matches!(err.agent_failure(), Some(AgentFailure::AccessDenied(_))), "{err}");
}

#[tokio::test]
async fn busy_mount_stop_names_the_holders_and_kill_holders_frees_it() {
    if !in_private_mount_ns("filesystem_agent::busy_mount_stop_names_the_holders_and_kill_holders_frees_it") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mp = dir.path().join("mnt").display().to_string();
    std::fs::create_dir(&mp).unwrap();
    let _unmount = Unmount(mp.clone());
    let plugin = load(&host(), &built_plugin("filesystem")).await;
    let mut inst = plugin.instance("scratch", grants("tmpfs", &mp), Limits::default());
    let base = [("device", "tmpfs"), ("mountpoint", mp.as_str()), ("fstype", "tmpfs"), ("options", "size=4m")];
    let c = params(&plugin, &base);

    inst.start(&c, T).await.unwrap();
    assert_eq!(inst.monitor(&c, T).await.unwrap(), Health::Running);
    // A holder that dies on TERM, and one that ignores TERM (needs KILL).
    let polite = Holder::spawn(&mp, "exec sleep 120");
    let stubborn = Holder::spawn(&mp, "trap '' TERM; while :; do sleep 1; done");
    let (p1, p2) = (polite.pid(), stubborn.pid());
    assert!(wait_until(Duration::from_secs(10), || is_alive(p1) && is_alive(p2)).await);

    let err = inst.stop(&c, T).await.unwrap_err();
    let Some(AgentFailure::Failed(msg)) = err.agent_failure() else { panic!("{err}") };
    assert!(msg.contains("busy") && msg.contains(&format!("pid {p1} (sleep)")) && msg.contains(&format!("pid {p2} (sh)")), "{msg}");
    assert!(msg.contains("kill_holders"), "says how to fix it: {msg}");
    assert_eq!(mounts_at(&mp).len(), 1, "a busy mount stays mounted");
    assert_eq!(inst.monitor(&c, T).await.unwrap(), Health::Running);
    assert!(is_alive(p1) && is_alive(p2), "nothing killed without kill_holders");

    let mut with_kill = base.to_vec();
    with_kill.extend([("kill_holders", "true"), ("kill_grace_ms", "1000")]);
    let k = params(&plugin, &with_kill);
    inst.stop(&k, T).await.unwrap();
    assert!(mounts_at(&mp).is_empty(), "{:?}", mounts_at(&mp));
    assert!(!is_alive(p1) && !is_alive(p2), "holders must be gone (zombies count as gone)");
    assert_eq!(inst.monitor(&c, T).await.unwrap(), Health::Stopped);
    drop((polite, stubborn));
}

#[tokio::test]
async fn failed_probe_fails_start_and_leaves_nothing_mounted() {
    if !in_private_mount_ns("filesystem_agent::failed_probe_fails_start_and_leaves_nothing_mounted") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mp = dir.path().join("mnt").display().to_string();
    std::fs::create_dir(&mp).unwrap();
    let _unmount = Unmount(mp.clone());
    let plugin = load(&host(), &built_plugin("filesystem")).await;
    let mut inst = plugin.instance("ro", grants("tmpfs", &mp), Limits::default());
    // Read-only by request: not a failure by itself, but the write probe cannot pass.
    let c = params(&plugin, &[("device", "tmpfs"), ("mountpoint", &mp), ("fstype", "tmpfs"), ("options", "ro,size=1m"), ("probe", "true")]);
    let err = inst.start(&c, T).await.unwrap_err();
    assert!(matches!(err.agent_failure(), Some(AgentFailure::Failed(m)) if m.contains("probe")), "{err}");
    assert!(mounts_at(&mp).is_empty(), "a failed start leaves nothing mounted: {:?}", mounts_at(&mp));

    let bad = params(&plugin, &[("device", "UUID=1234"), ("mountpoint", &mp)]);
    let err = inst.start(&bad, T).await.unwrap_err();
    assert!(matches!(err.agent_failure(), Some(AgentFailure::InvalidConfig(m)) if m.contains("device")), "{err}");
}
