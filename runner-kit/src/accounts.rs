//! `/etc/passwd` and `/etc/group` read as text, without the C library's
//! name services: what a static binary (the runner agent) and a caller
//! reading an image's files (docker) both need.

/// One `name:password:uid:gid:gecos:home:shell` line of `/etc/passwd`.
/// Only the name and uid are required; a missing field after them is `None`
/// or empty, as Docker's user lookup (runc) reads short lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasswdEntry<'a> {
    /// The user name.
    pub name: &'a str,
    /// The password field (`x` where a shadow file holds it).
    pub password: &'a str,
    /// The uid.
    pub uid: u32,
    /// The primary gid, when the line has a valid one.
    pub gid: Option<u32>,
    /// The comment field.
    pub gecos: &'a str,
    /// The home directory.
    pub home: &'a str,
    /// The login shell.
    pub shell: &'a str,
}

/// The entries of a passwd file's text; lines without a name and a numeric
/// uid are skipped.
pub fn passwd_entries(text: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    text.lines().filter_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next().filter(|name| !name.is_empty())?;
        let password = fields.next()?;
        let uid = fields.next()?.parse().ok()?;
        let gid = fields.next().and_then(|gid| gid.parse().ok());
        let mut rest = || fields.next().unwrap_or_default();
        Some(PasswdEntry {
            name,
            password,
            uid,
            gid,
            gecos: rest(),
            home: rest(),
            shell: rest(),
        })
    })
}

/// The `(name, gid)` of each `name:password:gid:members` line of a group
/// file's text; lines without a name and a numeric gid are skipped.
pub fn group_entries(text: &str) -> impl Iterator<Item = (&str, u32)> {
    text.lines().filter_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next().filter(|name| !name.is_empty())?;
        let _password = fields.next()?;
        Some((name, fields.next()?.parse().ok()?))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwd_lines_full_short_and_broken() {
        let text = "root:x:0:0:root:/root:/bin/sh\nshort:x:7\n:x:1:1::/:/bin/sh\nbad:x:u:0\n\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin";
        let entries: Vec<_> = passwd_entries(text).collect();
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[0].home, "/root");
        assert_eq!(entries[0].gid, Some(0));
        assert_eq!(
            (entries[1].name, entries[1].uid, entries[1].gid),
            ("short", 7, None)
        );
        assert_eq!(entries[1].home, "");
        assert_eq!(entries[2].uid, 65534);
        assert_eq!(entries[2].shell, "/usr/sbin/nologin");
    }

    #[test]
    fn group_lines() {
        let text = "root:x:0:\nstaff:x:50:a,b\nbroken:x:\n";
        let groups: Vec<_> = group_entries(text).collect();
        assert_eq!(groups, vec![("root", 0), ("staff", 50)]);
    }

    #[test]
    fn hostile_text_is_skipped_not_a_panic() {
        let text = "a:b:99999999999999999999:0\n::::::\n\u{0}:x:1:1\n:::";
        let names: Vec<_> = passwd_entries(text).map(|e| e.name).collect();
        assert_eq!(names, vec!["\u{0}"]);
        assert_eq!(group_entries(text).collect::<Vec<_>>(), vec![("\u{0}", 1)]);
    }
}
