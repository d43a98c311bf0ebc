use super::*;
use std::os::unix::fs::PermissionsExt;

fn script(path: &Path, body: &str) -> PathBuf {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.to_path_buf()
}

/// A real interpreter (not a shim) to stand behind the fake shims.
fn real_python() -> PathBuf {
    let out = std::process::Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3 runs");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

struct World {
    root: tempfile::TempDir,
}

impl World {
    fn new() -> World {
        World {
            root: tempfile::tempdir().unwrap(),
        }
    }
    fn path(&self, rel: &str) -> PathBuf {
        self.root.path().join(rel)
    }
    fn exe(&self, rel: &str) -> PathBuf {
        script(&self.path(rel), "exit 0")
    }
    /// Every rule has a candidate; `cache_file` inside the world.
    fn full(&self) -> Discovery {
        std::fs::create_dir_all(self.path("project/.git")).unwrap();
        self.exe("project/.venv/bin/python");
        self.exe("active/bin/python");
        self.exe("installed/bin/python");
        std::fs::write(self.path("installed/pyvenv.cfg"), "home = /usr/bin\n").unwrap();
        self.exe("pathdir/python3");
        Discovery {
            explicit: Some(self.exe("explicit/python")),
            launcher: Some(self.exe("launcher/python")),
            virtual_env: Some(self.path("active")),
            project: self.path("project"),
            installed_exe: Some(self.exe("installed/bin/stepkernel")),
            path_var: Some(self.path("pathdir").into_os_string()),
            cache_file: Some(self.path("cache/interpreters.json")),
        }
    }
}

#[test]
fn the_order_is_explicit_launcher_virtualenv_project_installed_path() {
    let world = World::new();
    let mut d = world.full();
    let mut seen = Vec::new();
    loop {
        let found = d.find().unwrap();
        seen.push((found.source, found.path.clone()));
        match found.source {
            Source::Explicit => d.explicit = None,
            Source::Launcher => d.launcher = None,
            Source::VirtualEnv => d.virtual_env = None,
            Source::ProjectVenv => {
                std::fs::remove_file(world.path("project/.venv/bin/python")).unwrap()
            }
            Source::InstalledVenv => d.installed_exe = None,
            Source::Path => break,
        }
    }
    let expected = [
        (Source::Explicit, "explicit/python"),
        (Source::Launcher, "launcher/python"),
        (Source::VirtualEnv, "active/bin/python"),
        (Source::ProjectVenv, "project/.venv/bin/python"),
        (Source::InstalledVenv, "installed/bin/python"),
        (Source::Path, "pathdir/python3"),
    ];
    let expected: Vec<_> = expected.iter().map(|(s, p)| (*s, world.path(p))).collect();
    assert_eq!(seen, expected);
    d.path_var = Some(world.path("nowhere").into_os_string());
    let err = d.find().unwrap_err().to_string();
    assert!(err.contains("no Python interpreter found"), "{err}");
    assert!(err.contains("pass --python"), "{err}");
}

#[test]
fn a_named_interpreter_that_is_missing_is_an_error_not_a_fallback() {
    let world = World::new();
    let mut d = world.full();
    d.explicit = Some(world.path("no/such/python"));
    let err = d.find().unwrap_err().to_string();
    assert!(err.starts_with("--python names "), "{err}");
    assert!(err.contains("no/such/python"), "{err}");
    d.explicit = None;
    d.launcher = Some(world.path("gone/python"));
    let err = d.find().unwrap_err().to_string();
    assert!(err.starts_with("$STEPKERNEL_PYTHON names "), "{err}");
}

#[test]
fn a_bare_name_is_looked_up_on_path_and_relative_paths_in_the_project() {
    let world = World::new();
    let mut d = world.full();
    d.explicit = Some(PathBuf::from("python3"));
    assert_eq!(d.find().unwrap().path, world.path("pathdir/python3"));
    d.explicit = Some(PathBuf::from(".venv/bin/python"));
    assert_eq!(
        d.find().unwrap().path,
        world.path("project/.venv/bin/python")
    );
}

#[test]
fn a_stale_virtual_env_falls_through() {
    let world = World::new();
    let mut d = world.full();
    d.explicit = None;
    d.launcher = None;
    d.virtual_env = Some(world.path("deleted-env"));
    assert_eq!(d.find().unwrap().source, Source::ProjectVenv);
}

#[test]
fn the_project_venv_is_found_from_a_subdirectory_but_not_above_the_repository() {
    let world = World::new();
    world.exe("outer/.venv/bin/python");
    world.exe("outer/repo/.venv/bin/python");
    std::fs::create_dir_all(world.path("outer/repo/.git")).unwrap();
    std::fs::create_dir_all(world.path("outer/repo/tests/unit")).unwrap();
    assert_eq!(
        project_venv(&world.path("outer/repo/tests/unit")),
        Some(world.path("outer/repo/.venv/bin/python"))
    );
    std::fs::remove_file(world.path("outer/repo/.venv/bin/python")).unwrap();
    assert_eq!(project_venv(&world.path("outer/repo/tests/unit")), None);
}

#[test]
fn tool_environments_are_not_the_users_environment() {
    let world = World::new();
    let exe = world.exe("tool/bin/stepkernel");
    world.exe("tool/bin/python");
    assert_eq!(
        installed_venv(&exe),
        None,
        "no pyvenv.cfg: not a virtualenv"
    );
    std::fs::write(world.path("tool/pyvenv.cfg"), "").unwrap();
    assert_eq!(installed_venv(&exe), Some(world.path("tool/bin/python")));
    std::fs::write(world.path("tool/uv-receipt.toml"), "").unwrap();
    assert_eq!(installed_venv(&exe), None);
    std::fs::remove_file(world.path("tool/uv-receipt.toml")).unwrap();
    std::fs::write(world.path("tool/pipx_metadata.json"), "{}").unwrap();
    assert_eq!(installed_venv(&exe), None);
}

#[test]
fn a_shim_is_resolved_once_then_cached_until_a_version_file_changes() {
    let world = World::new();
    let real = real_python();
    let count = world.path("shim-runs");
    let shim = script(
        &world.path("manager/shims/python3"),
        &format!(
            "echo run >> '{}'\nexec '{}' \"$@\"",
            count.display(),
            real.display()
        ),
    );
    assert!(shim::is_shim(&shim));
    let mut d = world.full();
    d.explicit = None;
    d.launcher = None;
    d.virtual_env = None;
    d.installed_exe = None;
    std::fs::remove_file(world.path("project/.venv/bin/python")).unwrap();
    d.path_var = Some(shim.parent().unwrap().as_os_str().to_owned());
    let runs = || {
        std::fs::read_to_string(&count)
            .unwrap_or_default()
            .lines()
            .count()
    };

    let found = d.find().unwrap();
    assert_eq!(found.path, real);
    assert_eq!(found.shim.as_deref(), Some(shim.as_path()));
    assert_eq!(found.source, Source::Path);
    assert_eq!(runs(), 1);
    assert_eq!(d.find().unwrap().path, real);
    assert_eq!(runs(), 1, "the second start is answered from the cache");

    std::fs::write(world.path("project/.python-version"), "3.12\n").unwrap();
    assert_eq!(d.find().unwrap().path, real);
    assert_eq!(runs(), 2, "a new .python-version asks the shim again");
    assert_eq!(d.find().unwrap().path, real);
    assert_eq!(runs(), 2);

    d.cache_file = None;
    d.find().unwrap();
    assert_eq!(runs(), 3, "without a cache file the shim runs every time");
}

#[test]
fn a_broken_shim_says_which_and_why() {
    let world = World::new();
    let shim = script(
        &world.path("shims/python3"),
        "echo 'pyenv: version `3.99` is not installed' >&2; exit 1",
    );
    let d = Discovery {
        explicit: Some(shim.clone()),
        project: world.path("."),
        ..Default::default()
    };
    let err = d.find().unwrap_err().to_string();
    assert!(err.contains(&shim.display().to_string()), "{err}");
    assert!(err.contains("3.99"), "{err}");
    assert!(err.contains("pass --python"), "{err}");
}

#[test]
fn a_wrapper_script_outside_a_shims_directory_is_run_as_given() {
    let world = World::new();
    let wrapper = world.exe("tools/python-with-env");
    assert!(!shim::is_shim(&wrapper));
    let d = Discovery {
        explicit: Some(wrapper.clone()),
        project: world.path("."),
        ..Default::default()
    };
    assert_eq!(d.find().unwrap().path, wrapper);
    // A binary in a `shims` directory is not a script, so not resolved either.
    let bin = world.path("shims/python3");
    std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
    std::fs::write(&bin, b"\x7fELF....").unwrap();
    assert!(!shim::is_shim(&bin));
}
