//! The downloader against a local HTTP server on 127.0.0.1 serving archives made by the test.

mod common;

use std::io::Write;
use std::net::TcpListener;
use std::path::Path;

use common::http::Server;
use tfkd_data::download::{self, ArchiveKind, Remote, Reporter, Silent, COMPLETE_MARKER};
use tfkd_data::{DataError, ImageDataset, Split};

fn md5_hex(bytes: &[u8]) -> String {
    use md5::{Digest, Md5};
    Md5::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// A small CIFAR-100-like tar.gz: `cifar-100-binary/test.bin` with 3 records.
fn cifar_tar_gz() -> Vec<u8> {
    let mut recs = Vec::new();
    for i in 0..3u8 {
        recs.extend([i, 10 + i]);
        recs.extend(std::iter::repeat(i).take(3072));
    }
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let mut h = tar::Header::new_gnu();
    h.set_size(recs.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    tar.append_data(&mut h, "cifar-100-binary/test.bin", &recs[..]).unwrap();
    tar.into_inner().unwrap().finish().unwrap()
}

fn zip_archive() -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default();
    w.add_directory("tiny-imagenet-200/", opts).unwrap();
    w.start_file("tiny-imagenet-200/wnids.txt", opts).unwrap();
    w.write_all(b"n01\nn02\n").unwrap();
    w.finish().unwrap().into_inner()
}

fn remote(url: &str, body: &[u8], kind: ArchiveKind, folder: &str, file: &str) -> Remote {
    Remote {
        name: "test".into(),
        url: url.into(),
        file_name: file.into(),
        md5: md5_hex(body),
        kind,
        folder: folder.into(),
    }
}

#[derive(Default)]
struct Recorder {
    steps: Vec<String>,
    last: u64,
    total: Option<u64>,
}

impl Reporter for Recorder {
    fn start(&mut self, what: &str, total: Option<u64>) {
        self.steps.push(what.to_string());
        if what.starts_with("downloading") {
            self.total = total;
        }
    }
    fn progress(&mut self, done: u64) {
        self.last = done;
    }
    fn finish(&mut self) {}
}

#[test]
fn downloads_verifies_and_extracts_tar_gz() {
    let body = cifar_tar_gz();
    let server = Server::start(body.clone(), 4, None);
    let root = tempfile::tempdir().unwrap();
    let r = remote(&server.url, &body, ArchiveKind::TarGz, "cifar-100-binary", "cifar-100-binary.tar.gz");
    let mut rec = Recorder::default();
    let dir = download::ensure(&r, root.path(), &mut rec).unwrap();
    assert_eq!(dir, root.path().join("cifar-100-binary"));
    assert!(dir.join(COMPLETE_MARKER).is_file());
    assert_eq!(rec.total, Some(body.len() as u64));
    assert!(rec.steps[0].starts_with("downloading") && rec.steps[1].starts_with("verifying"), "{:?}", rec.steps);
    let ds = ImageDataset::read_cifar100_bin(dir.join("test.bin")).unwrap();
    assert_eq!(ds.labels(), [10, 11, 12]);
    // No staging or partial file is left behind.
    let names: Vec<String> = std::fs::read_dir(root.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(names.iter().all(|n| !n.starts_with(".tfkd-extract") && !n.ends_with(".part")), "{names:?}");
    // A second call finds it complete without touching the network.
    assert_eq!(download::ensure(&r, root.path(), &mut Silent).unwrap(), dir);
    assert_eq!(server.requests(), 1);
    // The reader accepts the parent folder too (only test.bin here, so no full-size check).
    assert!(ImageDataset::cifar100(root.path(), Split::Test).is_err());
}

#[test]
fn zip_archives_extract_too() {
    let body = zip_archive();
    let server = Server::start(body.clone(), 2, None);
    let root = tempfile::tempdir().unwrap();
    let r = remote(&server.url, &body, ArchiveKind::Zip, "tiny-imagenet-200", "tiny-imagenet-200.zip");
    let dir = download::ensure(&r, root.path(), &mut Silent).unwrap();
    assert_eq!(std::fs::read_to_string(dir.join("wnids.txt")).unwrap(), "n01\nn02\n");
}

#[test]
fn wrong_checksum_names_the_archive_and_extracts_nothing() {
    let body = cifar_tar_gz();
    let server = Server::start(body.clone(), 2, None);
    let root = tempfile::tempdir().unwrap();
    let mut r = remote(&server.url, &body, ArchiveKind::TarGz, "cifar-100-binary", "cifar-100-binary.tar.gz");
    r.md5 = "00000000000000000000000000000000".into();
    let e = download::ensure(&r, root.path(), &mut Silent).unwrap_err();
    match &e {
        DataError::ChecksumMismatch { path, found, .. } => {
            assert!(path.ends_with("cifar-100-binary.tar.gz"));
            assert_eq!(found, &md5_hex(&body));
        }
        _ => panic!("{e:?}"),
    }
    assert!(!root.path().join("cifar-100-binary").exists());
}

#[test]
fn truncated_transfer_is_not_taken_as_complete() {
    let body = cifar_tar_gz();
    let server = Server::start(body.clone(), 2, Some(body.len() / 2));
    let root = tempfile::tempdir().unwrap();
    let r = remote(&server.url, &body, ArchiveKind::TarGz, "cifar-100-binary", "cifar-100-binary.tar.gz");
    let e = download::ensure(&r, root.path(), &mut Silent).unwrap_err();
    assert!(matches!(e, DataError::Download { .. }), "{e:?}");
    assert!(!root.path().join("cifar-100-binary.tar.gz").exists());
    assert!(!root.path().join("cifar-100-binary").exists());
}

#[test]
fn half_extracted_folder_is_redone() {
    let body = cifar_tar_gz();
    let root = tempfile::tempdir().unwrap();
    // An interrupted earlier extraction: the folder exists but has no completion marker, and
    // the archive was put in place by hand (no server at all: the URL is never contacted).
    std::fs::create_dir_all(root.path().join("cifar-100-binary")).unwrap();
    std::fs::write(root.path().join("cifar-100-binary/test.bin"), b"partial").unwrap();
    std::fs::write(root.path().join("cifar-100-binary.tar.gz"), &body).unwrap();
    let r = remote("http://127.0.0.1:9/unused", &body, ArchiveKind::TarGz, "cifar-100-binary", "cifar-100-binary.tar.gz");
    let dir = download::ensure(&r, root.path(), &mut Silent).unwrap();
    assert_eq!(std::fs::metadata(dir.join("test.bin")).unwrap().len(), 3 * 3074);
}

#[test]
fn no_network_gives_the_url_and_where_to_put_the_file() {
    // A port that was just free: the connection is refused.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let root = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{port}/cifar-10-binary.tar.gz");
    let r = Remote { url: url.clone(), ..Remote::cifar10() };
    let e = download::ensure(&r, root.path(), &mut Silent).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains(&url), "{msg}");
    assert!(msg.contains(&root.path().join("cifar-10-binary.tar.gz").display().to_string()), "{msg}");
}

#[test]
fn archive_escaping_the_destination_is_refused() {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let mut h = tar::Header::new_gnu();
    let evil = b"x";
    h.set_size(1);
    h.set_mode(0o644);
    // set_path refuses "..", so write the raw name bytes.
    h.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"../escaped.tx");
    h.set_cksum();
    tar.append(&h, &evil[..]).unwrap();
    let body = tar.into_inner().unwrap().finish().unwrap();
    let root = tempfile::tempdir().unwrap();
    let inner = root.path().join("d");
    std::fs::create_dir(&inner).unwrap();
    std::fs::write(inner.join("x.tar.gz"), &body).unwrap();
    let r = remote("http://127.0.0.1:9/", &body, ArchiveKind::TarGz, "x", "x.tar.gz");
    let e = download::ensure(&r, &inner, &mut Silent).unwrap_err();
    assert!(matches!(e, DataError::Archive { .. }) && e.to_string().contains("escapes"), "{e}");
    assert!(!Path::new(&root.path().join("escaped.tx")).exists());
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// The names in a folder, sorted.
fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

/// A small "published" file and its torch.hub-style name (`weights-<first 8 hex of SHA-256>.pth`).
fn published_file() -> (Vec<u8>, String, String) {
    let body: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
    let prefix = sha256_hex(&body)[..8].to_string();
    let name = format!("weights-{prefix}.pth");
    (body, prefix, name)
}

#[test]
fn sha256_file_is_verified_placed_and_not_downloaded_again() {
    let (body, prefix, name) = published_file();
    let server = Server::start(body.clone(), 4, None);
    let root = tempfile::tempdir().unwrap();
    // The folder is created (torch.hub's checkpoints folder may not exist yet).
    let dest = root.path().join("hub/checkpoints").join(&name);
    let mut rec = Recorder::default();
    let placed = download::ensure_file(&server.url, &dest, &prefix, &mut rec).unwrap();
    assert_eq!(placed, dest);
    assert_eq!(std::fs::read(&dest).unwrap(), body);
    assert_eq!(rec.total, Some(body.len() as u64));
    assert!(rec.steps[0].starts_with("downloading") && rec.steps[1].starts_with("verifying"), "{:?}", rec.steps);
    assert_eq!(names_in(dest.parent().unwrap()), [name.as_str()], "no .part file is left");
    // A second call verifies the file in place and does not download it again; so does a
    // call whose URL is unreachable.
    assert_eq!(download::ensure_file(&server.url, &dest, &prefix, &mut Silent).unwrap(), dest);
    assert_eq!(download::ensure_file("http://127.0.0.1:9/unused", &dest, &prefix, &mut Silent).unwrap(), dest);
    assert_eq!(server.requests(), 1);
    // The whole digest is a prefix too.
    assert!(download::ensure_file(&server.url, &dest, &sha256_hex(&body), &mut Silent).is_ok());
    assert_eq!(download::sha256_file(&dest, &mut Silent).unwrap(), sha256_hex(&body));
}

#[test]
fn corrupted_download_is_refused_and_deleted() {
    let (body, prefix, name) = published_file();
    let mut corrupted = body.clone();
    corrupted[100] ^= 1;
    let server = Server::start(corrupted.clone(), 2, None);
    let root = tempfile::tempdir().unwrap();
    let dest = root.path().join(&name);
    let e = download::ensure_file(&server.url, &dest, &prefix, &mut Silent).unwrap_err();
    match &e {
        DataError::HashMismatch { path, expected_prefix, found, deleted } => {
            assert_eq!(path, &dest);
            assert_eq!(expected_prefix, &prefix);
            assert_eq!(found, &sha256_hex(&corrupted));
            assert!(*deleted);
        }
        _ => panic!("{e:?}"),
    }
    let msg = e.to_string();
    assert!(msg.contains(&prefix) && msg.contains(&name) && msg.contains("deleted"), "{msg}");
    assert!(names_in(root.path()).is_empty(), "{:?}", names_in(root.path()));
}

#[test]
fn bad_file_in_place_is_named_and_kept() {
    let (body, prefix, name) = published_file();
    let root = tempfile::tempdir().unwrap();
    let dest = root.path().join(&name);
    std::fs::write(&dest, &body[..10]).unwrap();
    // No server: a file in place is never downloaded again, even when it does not match.
    let e = download::ensure_file("http://127.0.0.1:9/unused", &dest, &prefix, &mut Silent).unwrap_err();
    assert!(matches!(&e, DataError::HashMismatch { deleted: false, .. }), "{e:?}");
    assert!(e.to_string().contains("delete the file to download it again"), "{e}");
    assert!(dest.is_file());
}

#[test]
fn truncated_sha256_download_leaves_nothing() {
    let (body, prefix, name) = published_file();
    let server = Server::start(body.clone(), 2, Some(body.len() / 2));
    let root = tempfile::tempdir().unwrap();
    let e = download::ensure_file(&server.url, &root.path().join(&name), &prefix, &mut Silent).unwrap_err();
    assert!(matches!(e, DataError::Download { .. }), "{e:?}");
    assert!(names_in(root.path()).is_empty(), "{:?}", names_in(root.path()));
}

#[test]
fn a_prefix_that_verifies_nothing_is_refused() {
    let root = tempfile::tempdir().unwrap();
    for prefix in ["", "F37072FD", "f37072fz", &"0".repeat(65)] {
        let e = download::ensure_file("http://127.0.0.1:9/unused", &root.path().join("w.pth"), prefix, &mut Silent)
            .unwrap_err();
        assert!(matches!(e, DataError::InvalidConfig { what: "SHA-256 prefix", .. }), "{prefix}: {e:?}");
    }
}

#[test]
fn official_remotes_carry_the_published_checksums() {
    assert_eq!(Remote::cifar10().md5, "c32a1d4ab5d03f1284b67883e8d87530");
    assert_eq!(Remote::cifar100().md5, "03b5dce01913d631647c71ecec9e9cb8");
    assert_eq!(Remote::tiny_imagenet().md5, "90528d7ca1a48142e341f4ef8d21d0de");
    assert_eq!(Remote::by_name("cifar-100").unwrap().folder, "cifar-100-binary");
    assert!(Remote::by_name("mnist").is_none());
}
