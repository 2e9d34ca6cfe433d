//! The downloader against a local HTTP server on 127.0.0.1 serving archives made by the test.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tfkd_data::download::{self, ArchiveKind, Remote, Reporter, Silent, COMPLETE_MARKER};
use tfkd_data::{DataError, ImageDataset, Split};

/// Serves `body` to at most `max_requests` connections on 127.0.0.1; `cut` truncates the body
/// (with the full Content-Length announced). Returns the URL and a request counter.
fn serve(body: Vec<u8>, max_requests: usize, cut: Option<usize>) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/archive", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(max_requests) {
            let Ok(mut s) = stream else { continue };
            c.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
            let _ = s.write_all(head.as_bytes());
            let _ = s.write_all(&body[..cut.unwrap_or(body.len())]);
        }
    });
    (url, count)
}

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
    let (url, count) = serve(body.clone(), 4, None);
    let root = tempfile::tempdir().unwrap();
    let r = remote(&url, &body, ArchiveKind::TarGz, "cifar-100-binary", "cifar-100-binary.tar.gz");
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
    assert_eq!(count.load(Ordering::SeqCst), 1);
    // The reader accepts the parent folder too (only test.bin here, so no full-size check).
    assert!(ImageDataset::cifar100(root.path(), Split::Test).is_err());
}

#[test]
fn zip_archives_extract_too() {
    let body = zip_archive();
    let (url, _) = serve(body.clone(), 2, None);
    let root = tempfile::tempdir().unwrap();
    let r = remote(&url, &body, ArchiveKind::Zip, "tiny-imagenet-200", "tiny-imagenet-200.zip");
    let dir = download::ensure(&r, root.path(), &mut Silent).unwrap();
    assert_eq!(std::fs::read_to_string(dir.join("wnids.txt")).unwrap(), "n01\nn02\n");
}

#[test]
fn wrong_checksum_names_the_archive_and_extracts_nothing() {
    let body = cifar_tar_gz();
    let (url, _) = serve(body.clone(), 2, None);
    let root = tempfile::tempdir().unwrap();
    let mut r = remote(&url, &body, ArchiveKind::TarGz, "cifar-100-binary", "cifar-100-binary.tar.gz");
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
    let (url, _) = serve(body.clone(), 2, Some(body.len() / 2));
    let root = tempfile::tempdir().unwrap();
    let r = remote(&url, &body, ArchiveKind::TarGz, "cifar-100-binary", "cifar-100-binary.tar.gz");
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

#[test]
fn official_remotes_carry_the_published_checksums() {
    assert_eq!(Remote::cifar10().md5, "c32a1d4ab5d03f1284b67883e8d87530");
    assert_eq!(Remote::cifar100().md5, "03b5dce01913d631647c71ecec9e9cb8");
    assert_eq!(Remote::tiny_imagenet().md5, "90528d7ca1a48142e341f4ef8d21d0de");
    assert_eq!(Remote::by_name("cifar-100").unwrap().folder, "cifar-100-binary");
    assert!(Remote::by_name("mnist").is_none());
}
