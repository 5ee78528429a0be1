//! Who is on the other end of the control socket: user and group names from `/etc/passwd` and
//! `/etc/group` (no NSS: the daemon must not hang on a directory service), and a process's
//! supplementary groups from `/proc/<pid>/status`.

/// The name of `uid`, or `uid N` when it has none here.
pub fn user_name(uid: u32) -> String {
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                let mut f = l.split(':');
                let name = f.next()?;
                let id: u32 = f.nth(1)?.parse().ok()?;
                (id == uid).then(|| name.to_string())
            })
        })
        .unwrap_or_else(|| format!("uid {uid}"))
}

/// The gid of group `name` (a number is taken as a gid).
pub fn group_id(name: &str) -> Result<u32, String> {
    if let Ok(gid) = name.parse() {
        return Ok(gid);
    }
    let text = std::fs::read_to_string("/etc/group").map_err(|e| format!("cannot read /etc/group: {e}"))?;
    text.lines()
        .find_map(|l| {
            let mut f = l.split(':');
            (f.next()? == name).then(|| f.nth(1)?.parse().ok())?
        })
        .ok_or_else(|| format!("group `{name}` does not exist on this machine (groupadd {name})"))
}

/// Whether process `pid` (with primary group `gid`) is in group `want`: its primary group or
/// one of its supplementary groups.
pub fn process_in_group(pid: Option<i32>, gid: u32, want: u32) -> bool {
    if gid == want {
        return true;
    }
    let Some(pid) = pid else { return false };
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|t| {
            t.lines().find(|l| l.starts_with("Groups:")).map(|l| l["Groups:".len()..].split_whitespace().any(|g| g.parse() == Ok(want)))
        })
        .unwrap_or(false)
}

/// Who sent a request on the control socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub user: String,
    /// A member of `daemon.status_group`, not root: `status` and `events` only.
    pub read_only: bool,
}

impl Caller {
    /// The daemon itself (in-process callers, tests).
    pub fn root() -> Self {
        Self { uid: 0, user: "root".into(), read_only: false }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_the_local_files() {
        assert_eq!(user_name(0), "root");
        assert_eq!(user_name(4_000_000_000), "uid 4000000000");
        assert_eq!(group_id("root"), Ok(0));
        assert_eq!(group_id("17"), Ok(17));
        assert!(group_id("no-such-group-xyz").unwrap_err().contains("does not exist"));
        assert!(process_in_group(Some(std::process::id() as i32), 5, 5));
        assert!(!process_in_group(None, 5, 6));
    }
}
