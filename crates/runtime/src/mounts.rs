//! The mounts this process sees, read from `/proc/self/mountinfo` (with its octal escapes of
//! spaces and other bytes undone).

use std::io;
use std::path::PathBuf;

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub mount_point: PathBuf,
    pub fstype: String,
    /// The mount's source: a device path, or a name such as `tmpfs`.
    pub source: String,
}

/// The mounts of this process's mount namespace.
pub fn mounts() -> io::Result<Vec<Mount>> {
    Ok(parse(&std::fs::read_to_string("/proc/self/mountinfo")?))
}

/// The mounts a mountinfo text lists; lines it cannot read are left out.
pub fn parse(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split(' ').nth(4)?;
            let mut r = right.split(' ');
            let fstype = r.next()?.to_string();
            let source = r.next()?;
            Some(Mount {
                mount_point: PathBuf::from(unescape(mount_point)),
                fstype,
                source: unescape(source),
            })
        })
        .collect()
}

/// Undoes mountinfo's `\ooo` octal escapes.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn lines_and_escapes() {
        let text = "22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n\
                    90 22 0:45 / /tmp/a\\040b rw - btrfs /dev/loop3 rw,space_cache=v2\n\
                    91 22 0:46 / /mnt/c rw - tmpfs tmpfs rw,size=1024k\n\
                    not a mountinfo line\n";
        let m = parse(text);
        assert_eq!(m.len(), 3);
        assert_eq!(m[1].mount_point, PathBuf::from("/tmp/a b"));
        assert_eq!(m[1].fstype, "btrfs");
        assert_eq!(m[1].source, "/dev/loop3");
        assert_eq!(m[2].source, "tmpfs");
        assert_eq!(unescape("/plain"), "/plain");
    }

    #[test]
    fn this_process_sees_its_root() {
        assert!(
            mounts()
                .unwrap()
                .iter()
                .any(|m| m.mount_point == Path::new("/"))
        );
    }
}
