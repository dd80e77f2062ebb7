//! The image directory: named image files, opened through the container format
//! in `stasis_proto::image`, with every error carrying the file's name.

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use prost::Message;
use stasis_proto::image::{Header, ImageReader, ImageWriter};

use crate::error::{Error, PathCtx, Result};

pub const INVENTORY: &str = "inventory.img";

/// Header of a per-type image (common magic + the type's magic).
pub fn common(m: u32) -> Header {
    Header::Common(m)
}

pub type Writer = ImageWriter<BufWriter<File>>;
pub type Reader = ImageReader<BufReader<File>>;

#[derive(Debug, Clone)]
pub struct ImageDir {
    path: PathBuf,
}

impl ImageDir {
    /// Open a directory to dump into. It must exist and be writable; a stale
    /// inventory is removed first so an interrupted dump never looks complete.
    pub fn create(path: &Path) -> Result<Self> {
        let meta = fs::metadata(path).path_ctx(path)?;
        if !meta.is_dir() {
            return Err(Error::io(
                path,
                std::io::Error::from_raw_os_error(libc::ENOTDIR),
            ));
        }
        let dir = ImageDir {
            path: path.to_path_buf(),
        };
        // Prove we can write here before touching the target.
        let probe = dir.file(".stasis-probe");
        File::create(&probe).path_ctx(&probe)?;
        let _ = fs::remove_file(&probe);
        match fs::remove_file(dir.file(INVENTORY)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(dir.file(INVENTORY), e)),
        }
        Ok(dir)
    }

    /// Open a complete image directory for restore.
    pub fn open(path: &Path) -> Result<Self> {
        let meta = fs::metadata(path).path_ctx(path)?;
        if !meta.is_dir() {
            return Err(Error::io(
                path,
                std::io::Error::from_raw_os_error(libc::ENOTDIR),
            ));
        }
        let dir = ImageDir {
            path: path.to_path_buf(),
        };
        if !dir.exists(INVENTORY) {
            return Err(Error::bad_image(
                path.join(INVENTORY).display().to_string(),
                "missing: the dump is incomplete or this is not an image directory",
            ));
        }
        Ok(dir)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    pub fn exists(&self, name: &str) -> bool {
        self.file(name).exists()
    }

    fn create_file(&self, name: &str) -> Result<File> {
        let p = self.file(name);
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&p)
            .path_ctx(&p)
    }

    pub fn open_file(&self, name: &str) -> Result<File> {
        let p = self.file(name);
        File::open(&p).path_ctx(&p)
    }

    /// A raw (headerless) output file, e.g. `pages-N.img`.
    pub fn raw_writer(&self, name: &str) -> Result<File> {
        self.create_file(name)
    }

    pub fn writer(&self, name: &str, header: Header) -> Result<Writer> {
        let f = self.create_file(name)?;
        ImageWriter::new(BufWriter::with_capacity(64 << 10, f), header)
            .map_err(|e| Error::io(self.file(name), e))
    }

    pub fn reader(&self, name: &str, header: Header) -> Result<Reader> {
        let f = self.open_file(name)?;
        Ok(ImageReader::open(
            BufReader::with_capacity(64 << 10, f),
            header,
            name,
        )?)
    }

    /// Write one entry to `name` and close it.
    pub fn write_one<M: Message>(&self, name: &str, header: Header, m: &M) -> Result<()> {
        let mut w = self.writer(name, header)?;
        self.put(&mut w, name, m)?;
        self.finish(w, name)
    }

    /// Write several entries to `name`.
    pub fn write_all<'a, M: Message + 'a>(
        &self,
        name: &str,
        header: Header,
        items: impl IntoIterator<Item = &'a M>,
    ) -> Result<()> {
        let mut w = self.writer(name, header)?;
        for m in items {
            self.put(&mut w, name, m)?;
        }
        self.finish(w, name)
    }

    pub fn put<M: Message>(&self, w: &mut Writer, name: &str, m: &M) -> Result<()> {
        w.write_entry(m).map_err(|e| Error::io(self.file(name), e))
    }

    pub fn finish(&self, w: Writer, name: &str) -> Result<()> {
        let mut inner = w.finish().map_err(|e| Error::io(self.file(name), e))?;
        inner.flush().path_ctx(self.file(name))
    }

    /// Read all entries of `name`.
    pub fn read_all<M: Message + Default>(&self, name: &str, header: Header) -> Result<Vec<M>> {
        let mut r = self.reader(name, header)?;
        let mut out = Vec::new();
        while let Some(m) = r.read_entry::<M>()? {
            out.push(m);
        }
        Ok(out)
    }

    /// Read the single entry of `name`; an empty file is a bad image.
    pub fn read_one<M: Message + Default>(&self, name: &str, header: Header) -> Result<M> {
        let mut r = self.reader(name, header)?;
        r.read_entry::<M>()?
            .ok_or_else(|| Error::bad_image(name, "no entry in image"))
    }

    /// Write the inventory last, atomically: a dump is complete exactly when
    /// `inventory.img` exists.
    pub fn commit_inventory<M: Message>(&self, inv: &M) -> Result<()> {
        let tmp = ".inventory.img.tmp";
        {
            let f = self.create_file(tmp)?;
            let mut w = ImageWriter::new(BufWriter::new(f), Header::Inventory)
                .map_err(|e| Error::io(self.file(tmp), e))?;
            w.write_entry(inv)
                .map_err(|e| Error::io(self.file(tmp), e))?;
            let buf = w.finish().map_err(|e| Error::io(self.file(tmp), e))?;
            let f = buf
                .into_inner()
                .map_err(|e| Error::io(self.file(tmp), e.into_error()))?;
            f.sync_all().path_ctx(self.file(tmp))?;
        }
        fs::rename(self.file(tmp), self.file(INVENTORY)).path_ctx(self.file(INVENTORY))?;
        Ok(())
    }

    /// Read a raw file fully (small files only).
    pub fn read_raw(&self, name: &str) -> Result<Vec<u8>> {
        let mut v = Vec::new();
        self.open_file(name)?
            .read_to_end(&mut v)
            .path_ctx(self.file(name))?;
        Ok(v)
    }
}
