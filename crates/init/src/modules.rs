//! Kernel modules: the load order from `modules.dep`, and loading with `finit_module(2)`.
//!
//! The initramfs carries the modules the node needs under `/lib/modules/<kernel release>/`
//! with the `modules.dep` (and `modules.builtin`) `depmod` wrote for them. zos-init loads the
//! modules named in [`WANTED_LIST`] (one name per line, `#` comments), or every module of
//! `modules.dep` when there is no such list, each after the modules it depends on. A wanted
//! module that is neither in `modules.dep` nor built in, or a dependency cycle, is refused
//! before anything is loaded. A module whose load fails is reported and the others are still
//! loaded (a driver for absent hardware fails with `ENODEV`; what really needs it fails later
//! with a clearer error); a module already loaded counts as loaded.
//!
//! Compressed modules (`.ko.xz`, `.ko.zst`, `.ko.gz`) are handed to the kernel with
//! `MODULE_INIT_COMPRESSED_FILE`, which needs a kernel built with `CONFIG_MODULE_DECOMPRESS`;
//! the image script may as well decompress them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};

/// Where the modules of the running kernel are.
pub const MODULES_ROOT: &str = "/lib/modules";
/// The list of modules to load, in the initramfs.
pub const WANTED_LIST: &str = "/etc/zos/modules";
/// `finit_module` flag: the file is compressed, the kernel decompresses it.
const MODULE_INIT_COMPRESSED_FILE: libc::c_uint = 4;

/// One module of `modules.dep`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    /// Its name (`-` written `_`), like `virtio_net`.
    pub name: String,
    /// Its file, relative to the kernel's module directory.
    pub path: PathBuf,
    /// The names of the modules it needs.
    pub deps: Vec<String>,
}

/// What `modules.dep` (and `modules.builtin`) say.
#[derive(Debug, Clone, Default)]
pub struct ModuleDb {
    modules: BTreeMap<String, Module>,
    builtin: BTreeSet<String>,
}

/// Module lists zos-init refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModulesError {
    #[error("modules.dep line {line}: {reason}")]
    Syntax { line: usize, reason: String },
    #[error("module {name} is wanted{} but is neither in modules.dep nor built in", needed_by.as_ref().map(|n| format!(" by {n}")).unwrap_or_default())]
    Missing {
        name: String,
        needed_by: Option<String>,
    },
    #[error("modules depend on each other in a cycle: {}", .0.join(" -> "))]
    Cycle(Vec<String>),
}

/// A module's name from its file name or its name: directory and `.ko*` dropped, `-` as `_`.
pub fn module_name(s: &str) -> String {
    let base = s.rsplit('/').next().unwrap_or(s);
    let base = base.split_once(".ko").map(|(b, _)| b).unwrap_or(base);
    base.replace('-', "_")
}

fn relative_path(line: usize, s: &str) -> Result<PathBuf, ModulesError> {
    let p = PathBuf::from(s);
    let ok = !s.is_empty()
        && s.contains(".ko")
        && p.components().all(|c| matches!(c, Component::Normal(_)));
    if ok {
        Ok(p)
    } else {
        Err(ModulesError::Syntax {
            line,
            reason: format!("{s:?} is not a module path inside the module directory"),
        })
    }
}

impl ModuleDb {
    /// Parses `modules.dep` (`path: dep-path dep-path…` per line) and, when given,
    /// `modules.builtin` (one path per line).
    pub fn parse(dep: &str, builtin: Option<&str>) -> Result<Self, ModulesError> {
        let mut modules = BTreeMap::new();
        for (i, l) in dep.lines().enumerate() {
            let l = l.trim();
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            let (path, deps) = l.split_once(':').ok_or_else(|| ModulesError::Syntax {
                line: i + 1,
                reason: "no ':' after the module path".into(),
            })?;
            let path = relative_path(i + 1, path.trim())?;
            let mut dep_names = Vec::new();
            for d in deps.split_whitespace() {
                dep_names.push(module_name(
                    relative_path(i + 1, d)?.to_str().unwrap_or_default(),
                ));
            }
            let name = module_name(path.to_str().unwrap_or_default());
            if modules.contains_key(&name) {
                return Err(ModulesError::Syntax {
                    line: i + 1,
                    reason: format!("module {name} is listed twice"),
                });
            }
            modules.insert(
                name.clone(),
                Module {
                    name,
                    path,
                    deps: dep_names,
                },
            );
        }
        let builtin = builtin
            .unwrap_or_default()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(module_name)
            .collect();
        Ok(Self { modules, builtin })
    }

    /// Reads `modules.dep` and `modules.builtin` (if there) from `dir`.
    pub fn read(dir: &Path) -> Result<Self, ReadError> {
        let dep_path = dir.join("modules.dep");
        let dep = std::fs::read_to_string(&dep_path).map_err(|source| ReadError::Io {
            path: dep_path,
            source,
        })?;
        let builtin = std::fs::read_to_string(dir.join("modules.builtin")).ok();
        Ok(Self::parse(&dep, builtin.as_deref())?)
    }

    /// Every module of `modules.dep`, by name.
    pub fn names(&self) -> Vec<String> {
        self.modules.keys().cloned().collect()
    }

    pub fn get(&self, name: &str) -> Option<&Module> {
        self.modules.get(&module_name(name))
    }

    /// The modules to load for `wanted`, each after what it depends on and each once; built-in
    /// modules are left out. Refuses a missing module or a cycle.
    pub fn load_order(&self, wanted: &[String]) -> Result<Vec<&Module>, ModulesError> {
        let mut order = Vec::new();
        let mut done = BTreeSet::new();
        let mut path = Vec::new();
        for w in wanted {
            self.visit(&module_name(w), None, &mut path, &mut done, &mut order)?;
        }
        Ok(order)
    }

    fn visit<'a>(
        &'a self,
        name: &str,
        needed_by: Option<&str>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        order: &mut Vec<&'a Module>,
    ) -> Result<(), ModulesError> {
        if done.contains(name) {
            return Ok(());
        }
        if let Some(start) = path.iter().position(|p| p == name) {
            let mut cycle = path[start..].to_vec();
            cycle.push(name.to_string());
            return Err(ModulesError::Cycle(cycle));
        }
        let Some(m) = self.modules.get(name) else {
            if self.builtin.contains(name) {
                done.insert(name.to_string());
                return Ok(());
            }
            return Err(ModulesError::Missing {
                name: name.to_string(),
                needed_by: needed_by.map(str::to_string),
            });
        };
        path.push(name.to_string());
        for d in &m.deps {
            self.visit(d, Some(name), path, done, order)?;
        }
        path.pop();
        done.insert(name.to_string());
        order.push(m);
        Ok(())
    }
}

/// [`ModuleDb::read`] or [`wanted`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Modules(#[from] ModulesError),
}

/// The module directory of the running kernel under `root` (`/lib/modules/<release>`).
pub fn kernel_dir(root: &Path) -> PathBuf {
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    root.join(release)
}

/// The names in a wanted list (`#` comments, blank lines ignored).
pub fn parse_wanted(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(module_name)
        .collect()
}

/// The modules to load: those of `list` if it exists, else every module of `db`.
pub fn wanted(list: &Path, db: &ModuleDb) -> Result<Vec<String>, ReadError> {
    match std::fs::read_to_string(list) {
        Ok(text) => Ok(parse_wanted(&text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(db.names()),
        Err(source) => Err(ReadError::Io {
            path: list.to_owned(),
            source,
        }),
    }
}

/// Loads one module file into the kernel (the seam between the plan and the kernel).
pub trait ModuleLoader {
    fn load(&mut self, path: &Path) -> std::io::Result<()>;
}

/// The kernel: `finit_module(2)`.
#[derive(Debug, Default)]
pub struct Kernel;

impl ModuleLoader for Kernel {
    fn load(&mut self, path: &Path) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        let f = std::fs::File::open(path)?;
        let compressed = path
            .extension()
            .is_some_and(|e| matches!(e.to_str(), Some("xz" | "zst" | "gz")));
        let flags = if compressed {
            MODULE_INIT_COMPRESSED_FILE
        } else {
            0
        };
        // SAFETY: finit_module reads the open file and the empty, NUL-terminated options.
        let r =
            unsafe { libc::syscall(libc::SYS_finit_module, f.as_raw_fd(), c"".as_ptr(), flags) };
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
}

/// What [`load`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Loaded now.
    pub loaded: Vec<String>,
    /// Already in the kernel.
    pub present: Vec<String>,
    /// Failed, with why.
    pub failed: Vec<(String, String)>,
}

/// Loads `order` (from [`ModuleDb::load_order`]) from `dir`, one after the other.
pub fn load(dir: &Path, order: &[&Module], loader: &mut dyn ModuleLoader) -> LoadReport {
    let mut report = LoadReport::default();
    for m in order {
        match loader.load(&dir.join(&m.path)) {
            Ok(()) => report.loaded.push(m.name.clone()),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => report.present.push(m.name.clone()),
            Err(e) => {
                tracing::warn!(module = %m.name, error = %e, "cannot load module");
                report.failed.push((m.name.clone(), e.to_string()));
            }
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/drivers/net/virtio_net.ko.xz: kernel/drivers/net/net_failover.ko.xz kernel/net/core/failover.ko.xz
kernel/drivers/net/net_failover.ko.xz: kernel/net/core/failover.ko.xz
kernel/net/core/failover.ko.xz:
kernel/fs/fuse/fuse.ko:
kernel/fs/overlayfs/overlay.ko:
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio-ring.ko
kernel/drivers/virtio/virtio-ring.ko:
";

    fn names(order: &[&Module]) -> Vec<String> {
        order.iter().map(|m| m.name.clone()).collect()
    }

    fn pos(order: &[String], n: &str) -> usize {
        order.iter().position(|m| m == n).unwrap()
    }

    #[test]
    fn dependencies_load_first_and_once() {
        let db = ModuleDb::parse(DEP, None).unwrap();
        let order = names(
            &db.load_order(&[
                "virtio-net".into(),
                "net_failover".into(),
                "virtio_blk".into(),
            ])
            .unwrap(),
        );
        assert_eq!(
            order,
            [
                "failover",
                "net_failover",
                "virtio_net",
                "virtio_ring",
                "virtio_blk"
            ]
        );
        // Every module of the file, whatever the order asked: each after its dependencies.
        let all = names(&db.load_order(&db.names()).unwrap());
        assert_eq!(all.len(), 7);
        for m in &all {
            for d in &db.get(m).unwrap().deps {
                assert!(pos(&all, d) < pos(&all, m), "{d} before {m} in {all:?}");
            }
        }
    }

    #[test]
    fn builtin_modules_are_skipped_missing_ones_refused() {
        let dep = "kernel/a.ko: kernel/b.ko\n";
        let db = ModuleDb::parse(dep, Some("kernel/b.ko\nkernel/fs/ext4/ext4.ko\n")).unwrap();
        assert_eq!(
            names(&db.load_order(&["a".into(), "ext4".into()]).unwrap()),
            ["a"]
        );
        let db = ModuleDb::parse(dep, None).unwrap();
        let e = db.load_order(&["a".into()]).unwrap_err();
        assert_eq!(
            e,
            ModulesError::Missing {
                name: "b".into(),
                needed_by: Some("a".into())
            }
        );
        assert!(e.to_string().contains("module b is wanted by a"), "{e}");
        let e = db.load_order(&["nosuch".into()]).unwrap_err();
        assert!(
            e.to_string().starts_with("module nosuch is wanted but"),
            "{e}"
        );
    }

    #[test]
    fn cycles_are_refused() {
        let db = ModuleDb::parse("a.ko: b.ko\nb.ko: c.ko\nc.ko: a.ko\nd.ko:\n", None).unwrap();
        let e = db.load_order(&["d".into(), "a".into()]).unwrap_err();
        assert_eq!(
            e,
            ModulesError::Cycle(vec!["a".into(), "b".into(), "c".into(), "a".into()])
        );
        let db = ModuleDb::parse("a.ko: a.ko\n", None).unwrap();
        assert!(matches!(
            db.load_order(&["a".into()]),
            Err(ModulesError::Cycle(_))
        ));
    }

    #[test]
    fn malformed_lines_are_refused() {
        for (dep, want) in [
            ("kernel/a.ko kernel/b.ko\n", "no ':'"),
            ("/abs/a.ko:\n", "not a module path"),
            ("kernel/../../etc/passwd.ko:\n", "not a module path"),
            ("a.ko: ../b.ko\n", "not a module path"),
            ("a.ko:\nx/a.ko:\n", "listed twice"),
            ("notamodule:\n", "not a module path"),
        ] {
            let e = ModuleDb::parse(dep, None).unwrap_err().to_string();
            assert!(e.contains(want), "{dep:?}: {e}");
        }
    }

    #[test]
    fn wanted_lists() {
        assert_eq!(
            parse_wanted("# net\nvirtio-net\n\n fuse # mounts\n"),
            ["virtio_net", "fuse"]
        );
        let db = ModuleDb::parse(DEP, None).unwrap();
        let d = tempfile::tempdir().unwrap();
        assert_eq!(wanted(&d.path().join("none"), &db).unwrap().len(), 7);
        std::fs::write(d.path().join("list"), "overlay\n").unwrap();
        assert_eq!(wanted(&d.path().join("list"), &db).unwrap(), ["overlay"]);
    }

    struct Recorder(Vec<PathBuf>);
    impl ModuleLoader for Recorder {
        fn load(&mut self, path: &Path) -> std::io::Result<()> {
            self.0.push(path.to_owned());
            match path.file_name().and_then(|n| n.to_str()) {
                Some("fuse.ko") => Err(std::io::Error::from_raw_os_error(libc::EEXIST)),
                Some("overlay.ko") => Err(std::io::Error::from_raw_os_error(libc::ENODEV)),
                _ => Ok(()),
            }
        }
    }

    #[test]
    fn loading_goes_on_past_failures() {
        let db = ModuleDb::parse(DEP, None).unwrap();
        let order = db
            .load_order(&["fuse".into(), "overlay".into(), "virtio_blk".into()])
            .unwrap();
        let mut rec = Recorder(Vec::new());
        let report = load(Path::new("/m"), &order, &mut rec);
        assert_eq!(report.loaded, ["virtio_ring", "virtio_blk"]);
        assert_eq!(report.present, ["fuse"]);
        assert_eq!(report.failed.len(), 1);
        assert_eq!(report.failed[0].0, "overlay");
        assert_eq!(rec.0[0], Path::new("/m/kernel/fs/fuse/fuse.ko"));
    }

    #[test]
    fn the_real_loader_reports_a_missing_file() {
        let e = Kernel.load(Path::new("/nonexistent/x.ko")).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
    }
}
