//! `HostVfs` stays inside its root, whatever the path or the symlinks say.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::symlink;

use capsid_vfs::{HostVfs, Vfs, VfsError, VfsPath};

fn p(s: &str) -> VfsPath {
    VfsPath::parse(s).unwrap()
}

struct Fx {
    _tmp: tempfile::TempDir,
    root: std::path::PathBuf,
    outside: std::path::PathBuf,
    vfs: HostVfs,
}

fn fx() -> Fx {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(root.join("notes")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret"), b"top secret").unwrap();
    std::fs::write(root.join("notes/a.md"), b"hello").unwrap();
    let vfs = HostVfs::open(&root).unwrap();
    Fx {
        _tmp: tmp,
        root,
        outside,
        vfs,
    }
}

#[tokio::test]
async fn ordinary_operations_work_inside_the_root() {
    let f = fx();
    assert_eq!(f.vfs.read(&p("notes/a.md")).await.unwrap(), b"hello");
    f.vfs.create_dir_all(&p("x/y")).await.unwrap();
    f.vfs.write(&p("x/y/z"), b"1".to_vec()).await.unwrap();
    f.vfs.append(&p("x/y/z"), b"2".to_vec()).await.unwrap();
    assert_eq!(f.vfs.read(&p("x/y/z")).await.unwrap(), b"12");
    f.vfs.rename(&p("x/y/z"), &p("x/z")).await.unwrap();
    let names: Vec<_> = f
        .vfs
        .read_dir(&p("x"))
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, ["y", "z"]);
    assert_eq!(f.vfs.stat(&p("x/z")).await.unwrap().len, 2);
    f.vfs.remove_dir_all(&p("x")).await.unwrap();
    assert!(!f.vfs.exists(&p("x")).await.unwrap());
    assert!(matches!(
        f.vfs.read(&p("missing")).await,
        Err(VfsError::NotFound(_))
    ));
}

#[tokio::test]
async fn symlinks_out_of_the_root_are_refused() {
    let f = fx();
    symlink(f.outside.join("secret"), f.root.join("abs")).unwrap();
    symlink("../outside/secret", f.root.join("rel")).unwrap();
    symlink("../../outside", f.root.join("notes/up")).unwrap();
    for link in ["abs", "rel", "notes/up/secret"] {
        let err = f.vfs.read(&p(link)).await.unwrap_err();
        assert!(matches!(err, VfsError::Escape(_)), "{link}: {err}");
        assert!(
            matches!(f.vfs.stat(&p(link)).await, Err(VfsError::Escape(_))),
            "{link}"
        );
    }
    // Writing through an escaping link does not create anything outside.
    assert!(f.vfs.write(&p("abs"), b"pwned".to_vec()).await.is_err());
    assert!(
        f.vfs
            .write(&p("notes/up/new"), b"pwned".to_vec())
            .await
            .is_err()
    );
    assert_eq!(
        std::fs::read(f.outside.join("secret")).unwrap(),
        b"top secret"
    );
    assert!(!f.outside.join("new").exists());
}

#[tokio::test]
async fn a_symlink_planted_after_open_is_refused_too() {
    let f = fx();
    assert!(matches!(
        f.vfs.read(&p("late")).await,
        Err(VfsError::NotFound(_))
    ));
    symlink(&f.outside, f.root.join("late")).unwrap();
    assert!(matches!(
        f.vfs.read(&p("late/secret")).await,
        Err(VfsError::Escape(_))
    ));
    assert!(matches!(
        f.vfs.read_dir(&p("late")).await,
        Err(VfsError::Escape(_))
    ));
    // Swap a directory for a link to the outside between two calls.
    std::fs::rename(f.root.join("notes"), f.root.join("notes-old")).unwrap();
    symlink(&f.outside, f.root.join("notes")).unwrap();
    assert!(matches!(
        f.vfs.read(&p("notes/secret")).await,
        Err(VfsError::Escape(_))
    ));
}

#[tokio::test]
async fn links_that_stay_inside_are_followed_for_reads_only() {
    let f = fx();
    symlink("notes/a.md", f.root.join("inside")).unwrap();
    assert_eq!(f.vfs.read(&p("inside")).await.unwrap(), b"hello");
    // Writes never follow a final symlink.
    assert!(matches!(
        f.vfs.write(&p("inside"), b"x".to_vec()).await,
        Err(VfsError::Escape(_))
    ));
    assert_eq!(std::fs::read(f.root.join("notes/a.md")).unwrap(), b"hello");
}

#[test]
fn hostile_paths_never_parse() {
    for bad in [
        "/etc/passwd",
        "../outside/secret",
        "notes/../../outside",
        "notes/./a.md",
        "a\0b",
        "notes//a.md",
        "a\u{1b}[31m",
    ] {
        assert!(
            matches!(VfsPath::parse(bad), Err(VfsError::InvalidPath { .. })),
            "{bad:?}"
        );
    }
}

#[tokio::test]
async fn the_root_can_be_neither_removed_nor_moved() {
    let f = fx();
    let root = VfsPath::root();
    assert!(matches!(
        f.vfs.remove_dir_all(&root).await,
        Err(VfsError::InvalidPath { .. })
    ));
    assert!(matches!(
        f.vfs.remove_dir(&root).await,
        Err(VfsError::InvalidPath { .. })
    ));
    assert!(matches!(
        f.vfs.rename(&root, &p("elsewhere")).await,
        Err(VfsError::InvalidPath { .. })
    ));
    assert_eq!(
        std::fs::read(f.root.join("notes/a.md")).unwrap(),
        b"hello",
        "nothing emptied"
    );
}
