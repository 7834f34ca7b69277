//! Certificates the TLS tests make with `openssl`: a CA, server
//! certificates for 127.0.0.1 signed by it, client certificates.
//! P-256 keys, valid for a day; nothing here is trusted outside the test.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A CA in `dir`: `NAME.crt` and `NAME.key`.
pub struct Ca {
    pub cert: PathBuf,
    pub key: PathBuf,
    dir: PathBuf,
    name: String,
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl").args(args).output().expect("run openssl");
    assert!(out.status.success(), "openssl {} failed:\n{}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

impl Ca {
    /// A new self-signed CA named `name` (its files under `dir`).
    pub fn new(dir: &Path, name: &str) -> Ca {
        fs::create_dir_all(dir).expect("certs dir");
        let (cert, key) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            &format!("/CN=stagehand test {name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
            path_str(&key),
            "-out",
            path_str(&cert),
        ]);
        Ca { cert, key, dir: dir.to_path_buf(), name: name.to_string() }
    }

    /// A certificate for `leaf` signed by this CA: a server one for
    /// 127.0.0.1 and localhost, or a client one. Returns (cert, key).
    pub fn issue(&self, leaf: &str, server: bool) -> (PathBuf, PathBuf) {
        let base = self.dir.join(format!("{}-{leaf}", self.name));
        let (cert, key, csr, ext) = (
            base.with_extension("cert"),
            base.with_extension("key"),
            base.with_extension("csr"),
            base.with_extension("ext"),
        );
        openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            &format!("/CN={leaf}"),
            "-keyout",
            path_str(&key),
            "-out",
            path_str(&csr),
        ]);
        let extensions = if server {
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n"
        } else {
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n"
        };
        fs::write(&ext, extensions).expect("write extensions");
        openssl(&[
            "x509",
            "-req",
            "-in",
            path_str(&csr),
            "-CA",
            path_str(&self.cert),
            "-CAkey",
            path_str(&self.key),
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            path_str(&ext),
            "-out",
            path_str(&cert),
        ]);
        (cert, key)
    }
}
