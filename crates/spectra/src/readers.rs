//! Reading any spectrum file: [`detect`] tells DESI, SDSS and generic files apart by their
//! content (never by their name), [`read`] reads one with the matching reader.
//!
//! Detection rules, in order:
//! - The file must start (after gzip decompression) with a FITS `SIMPLE` card or be XML
//!   holding a `VOTABLE` element; anything else is refused.
//! - A VOTable is [`Kind::Generic`] (an IVOA SDM spectrum).
//! - A FITS file with a `FIBERMAP` HDU and at least one arm pair `X_WAVELENGTH` + `X_FLUX`
//!   is [`Kind::Desi`].
//! - A FITS file with a table `COADD` (or, unnamed, a first extension table with `FLUX` and
//!   `LOGLAM` columns) and a table `SPECOBJ` (or a second extension table with `PLUG_RA`) is
//!   [`Kind::Sdss`].
//! - Any other FITS file is [`Kind::Generic`]; its reader says what it lacks.
//!
//! The module also holds the FITS access the readers share (`fits`, crate-private): a thin
//! layer over CFITSIO that lists the HDUs, reads keywords, whole images and whole columns
//! and turns every failure into [`Error::BadFile`]. It calls CFITSIO directly instead of the
//! `fitsio` crate's typed API because that API panics on some valid inputs (variable-length
//! or complex columns, 64-bit unsigned images) and on unexpected HDU types.

use std::path::Path;

use crate::desi::ZCatalog;
use crate::{Error, Result, Spectrum};

/// The kinds of spectrum files this crate reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A DESI `coadd-*` or `spectra-*` file (see [`crate::desi`]).
    Desi,
    /// An SDSS/BOSS `spec-*` (spec-lite) file (see [`crate::sdss`]).
    Sdss,
    /// A 1-D FITS table or image, or an SDM VOTable (see [`crate::generic`]).
    Generic,
}

/// The kind of the spectrum file at `path`, from its content (see the module
/// documentation for the rules). Fails when the file is neither FITS nor a VOTable.
pub fn detect(path: &Path) -> Result<Kind> {
    match sniff(path)? {
        Content::VoTable => Ok(Kind::Generic),
        Content::Fits => Ok(kind_of(&fits::Fits::open(path)?)),
    }
}

/// Reads every spectrum of the file at `path` with the reader [`detect`] picks. `zcat`
/// supplies DESI redshifts (by TARGETID) and is ignored for other kinds.
pub fn read(path: &Path, zcat: Option<&ZCatalog>) -> Result<Vec<Spectrum>> {
    match sniff(path)? {
        Content::VoTable => crate::generic::read(path),
        Content::Fits => {
            let fits = fits::Fits::open(path)?;
            match kind_of(&fits) {
                Kind::Desi => crate::desi::read_fits(fits, zcat),
                Kind::Sdss => crate::sdss::read_fits(fits),
                Kind::Generic => crate::generic::read_fits(fits),
            }
        }
    }
}

fn kind_of(fits: &fits::Fits) -> Kind {
    if crate::desi::matches(fits) {
        Kind::Desi
    } else if crate::sdss::matches(fits) {
        Kind::Sdss
    } else {
        Kind::Generic
    }
}

/// What a file holds, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Content {
    /// FITS (possibly gzip-compressed).
    Fits,
    /// An XML VOTable (possibly gzip-compressed).
    VoTable,
}

/// Tells FITS from VOTable by the first bytes (after gzip decompression).
pub(crate) fn sniff(path: &Path) -> Result<Content> {
    use std::io::Read;
    let mut head = Vec::with_capacity(4096);
    std::fs::File::open(path)
        .and_then(|f| f.take(4096).read_to_end(&mut head))
        .map_err(|e| Error::io(path, e))?;
    if head.is_empty() {
        return Err(Error::bad_file(path, None, "the file is empty"));
    }
    let head = meridian_formats::content_head(&head, 4096);
    if head.starts_with(b"SIMPLE  =") {
        return Ok(Content::Fits);
    }
    let text = String::from_utf8_lossy(&head);
    let t = text.trim_start_matches('\u{feff}').trim_start();
    if (t.starts_with("<?xml") || t.starts_with("<VOTABLE") || t.starts_with("<!--"))
        && t.contains("VOTABLE")
    {
        return Ok(Content::VoTable);
    }
    let shown: String = t
        .chars()
        .take(24)
        .map(|c| if c.is_control() { '.' } else { c })
        .collect();
    Err(Error::bad_file(
        path,
        None,
        format!("neither a FITS file nor a VOTable (it starts with {shown:?})"),
    ))
}

/// The file's name (not its path), as [`Spectrum::file`] holds it.
pub(crate) fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// A Modified Julian Date (UTC) as ISO 8601 with milliseconds, like astropy's `isot`
/// (`2021-04-06T08:18:53.063`); `None` when not finite or outside years 1–9999.
pub(crate) fn mjd_to_iso(mjd: f64) -> Option<String> {
    if !mjd.is_finite() || !(-678_575.0..2_973_483.0).contains(&mjd) {
        return None;
    }
    let ms_total = (mjd * 86_400_000.0).round() as i64;
    let days = ms_total.div_euclid(86_400_000);
    let ms = ms_total.rem_euclid(86_400_000);
    // MJD 0 is 1858-11-17; days since 1970-01-01 are MJD - 40587.
    let (y, m, d) = civil_from_days(days - 40_587);
    Some(format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    ))
}

/// Year, month, day of the day `z` days after 1970-01-01 (proleptic Gregorian), after
/// Howard Hinnant's `civil_from_days`.
pub(crate) fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Checks every spectrum with [`Spectrum::check`], naming `hdu` and the spectrum in the
/// error.
pub(crate) fn check_all(path: &Path, hdu: &str, spectra: &[Spectrum]) -> Result<()> {
    for (i, s) in spectra.iter().enumerate() {
        s.check().map_err(|e| {
            Error::bad_file(
                path,
                Some(hdu),
                format!("spectrum {i} (specid {}): {e}", s.specid),
            )
        })?;
    }
    Ok(())
}

/// Panic-free FITS access over CFITSIO, shared by the readers.
pub(crate) mod fits {
    use std::ffi::{CStr, CString, c_char, c_int, c_void};
    use std::path::{Path, PathBuf};

    use fitsio::sys;

    use crate::{Error, Result};

    const END_OF_FILE: c_int = 107;
    const IMAGE_HDU: c_int = 0;
    /// CFITSIO's longest keyword value (FLEN_VALUE) plus room.
    const VALUE_LEN: usize = 96;
    /// Most HDUs listed.
    const MAX_HDUS: usize = 10_000;
    /// Most values one read may return (2^28: 1 GiB of `f32`), so that a header claiming an
    /// absurd size fails instead of exhausting memory.
    const MAX_VALUES: usize = 1 << 28;

    const TLOGICAL: c_int = 14;
    const TSTRING: c_int = 16;
    const TULONGLONG: c_int = 80;
    const TCOMPLEX: c_int = 83;
    const TDBLCOMPLEX: c_int = 163;
    const TBIT: c_int = 1;

    /// A value type CFITSIO converts to.
    pub(crate) trait Elem: Copy + Default {
        /// CFITSIO's datatype code.
        const CODE: c_int;
        /// From a logical value (1 or 0).
        fn from_f64(v: f64) -> Self;
    }

    macro_rules! elem {
        ($t:ty, $code:expr) => {
            impl Elem for $t {
                const CODE: c_int = $code;
                fn from_f64(v: f64) -> Self {
                    v as $t
                }
            }
        };
    }
    elem!(f32, 42);
    elem!(f64, 82);
    elem!(i32, 31);
    elem!(i64, 81);
    elem!(u32, 30);
    elem!(u64, 80);

    /// One column of a table HDU.
    #[derive(Debug, Clone)]
    pub(crate) struct Column {
        /// 1-based column number.
        number: c_int,
        /// TTYPEn as written (trimmed).
        pub(crate) name: String,
        /// TUNITn, when given.
        pub(crate) unit: Option<String>,
        /// CFITSIO's equivalent type code (negative: variable length).
        typecode: c_int,
        /// Elements per row.
        pub(crate) repeat: usize,
        /// Characters per string, for strings.
        width: usize,
    }

    impl Column {
        /// Whether the column holds text.
        pub(crate) fn is_string(&self) -> bool {
            self.typecode == TSTRING
        }
    }

    /// What an HDU holds.
    #[derive(Debug, Clone)]
    pub(crate) enum HduKind {
        /// An image (tile-compressed ones included), axes in FITS order (NAXIS1 first).
        Image {
            /// Axis lengths.
            shape: Vec<usize>,
            /// CFITSIO's equivalent BITPIX (BSCALE/BZERO considered: 40 for uint32).
            bitpix: c_int,
        },
        /// An ASCII or binary table.
        Table {
            /// Number of rows.
            rows: usize,
            /// Its columns.
            columns: Vec<Column>,
        },
    }

    /// One HDU of a file.
    #[derive(Debug, Clone)]
    pub(crate) struct Hdu {
        /// 0 for the primary HDU.
        pub(crate) index: usize,
        /// EXTNAME (trimmed), empty when there is none.
        pub(crate) name: String,
        /// What it holds.
        pub(crate) kind: HduKind,
    }

    impl Hdu {
        /// Its EXTNAME, or `HDU n` when it has none: how errors name it.
        pub(crate) fn label(&self) -> String {
            if self.name.is_empty() {
                format!("HDU {}", self.index)
            } else {
                self.name.clone()
            }
        }

        /// The column called `name` (case-insensitive).
        pub(crate) fn column(&self, name: &str) -> Option<&Column> {
            match &self.kind {
                HduKind::Table { columns, .. } => {
                    columns.iter().find(|c| c.name.eq_ignore_ascii_case(name))
                }
                HduKind::Image { .. } => None,
            }
        }

        /// Whether it has a column called `name` (case-insensitive).
        pub(crate) fn has(&self, name: &str) -> bool {
            self.column(name).is_some()
        }

        /// Number of rows of a table (0 for an image).
        pub(crate) fn rows(&self) -> usize {
            match &self.kind {
                HduKind::Table { rows, .. } => *rows,
                HduKind::Image { .. } => 0,
            }
        }

        /// Whether it is a table.
        pub(crate) fn is_table(&self) -> bool {
            matches!(self.kind, HduKind::Table { .. })
        }

        /// The axes of an image (FITS order), `None` for a table.
        pub(crate) fn shape(&self) -> Option<&[usize]> {
            match &self.kind {
                HduKind::Image { shape, .. } => Some(shape),
                HduKind::Table { .. } => None,
            }
        }
    }

    /// An open FITS file and its HDUs.
    pub(crate) struct Fits {
        file: fitsio::FitsFile,
        path: PathBuf,
        hdus: Vec<Hdu>,
    }

    /// CFITSIO's text for `status`, with the first message of its error stack, which is
    /// then cleared.
    fn cfitsio_message(status: c_int) -> String {
        let mut text = [0 as c_char; 96];
        let mut msg = [0 as c_char; 96];
        // SAFETY: ffgerr writes at most 31 bytes and ffgmsg at most 81 (FLEN_ERRMSG) bytes,
        // NUL-terminated, into the buffers; ffcmsg only clears CFITSIO's message stack.
        let (text, msg) = unsafe {
            sys::ffgerr(status, text.as_mut_ptr());
            sys::ffgmsg(msg.as_mut_ptr());
            sys::ffcmsg();
            (
                CStr::from_ptr(text.as_ptr()).to_string_lossy().into_owned(),
                CStr::from_ptr(msg.as_ptr()).to_string_lossy().into_owned(),
            )
        };
        let msg = msg.trim();
        if msg.is_empty() || msg.eq_ignore_ascii_case(text.trim()) {
            format!("CFITSIO error {status}: {}", text.trim())
        } else {
            format!("CFITSIO error {status}: {} ({msg})", text.trim())
        }
    }

    fn clear_messages() {
        // SAFETY: only clears CFITSIO's error message stack.
        unsafe { sys::ffcmsg() };
    }

    impl Fits {
        /// Opens the FITS file at `path` (plain or gzip-compressed) read-only and lists its
        /// HDUs.
        pub(crate) fn open(path: &Path) -> Result<Self> {
            let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
            if !meta.is_file() {
                return Err(Error::bad_file(path, None, "not a regular file"));
            }
            let name = path.to_str().ok_or_else(|| {
                Error::bad_file(
                    path,
                    None,
                    "the path is not valid UTF-8, which CFITSIO needs",
                )
            })?;
            // CFITSIO reads "[...]", "://" and a leading "-" as filters, URLs and stdin.
            if name.contains('[') || name.contains("://") || name.starts_with('-') {
                return Err(Error::bad_file(
                    path,
                    None,
                    "paths holding '[', '://' or starting with '-' cannot be opened (CFITSIO \
                     reads them as filters, URLs or standard input)",
                ));
            }
            let file = fitsio::FitsFile::open(path).map_err(|e| {
                clear_messages();
                Error::bad_file(path, None, format!("cannot be opened as FITS: {e}"))
            })?;
            let gz = {
                use std::io::Read;
                let mut magic = [0u8; 2];
                std::fs::File::open(path)
                    .and_then(|mut f| f.read_exact(&mut magic))
                    .is_ok()
                    && magic == [0x1f, 0x8b]
            };
            let mut fits = Self {
                file,
                path: path.to_path_buf(),
                hdus: Vec::new(),
            };
            fits.scan((!gz).then_some(meta.len()))?;
            Ok(fits)
        }

        fn raw(&mut self) -> *mut sys::fitsfile {
            // SAFETY: the pointer stays valid while `self.file` lives; every use below is a
            // CFITSIO call made through `&mut self`, so calls never overlap.
            unsafe { self.file.as_raw() }
        }

        fn err(&self, hdu: Option<&Hdu>, reason: impl Into<String>) -> Error {
            Error::bad_file(&self.path, hdu.map(Hdu::label).as_deref(), reason)
        }

        /// Makes HDU `index` (0-based) current.
        fn goto(&mut self, index: usize) -> std::result::Result<(), c_int> {
            let mut status = 0;
            let mut hdutype = 0;
            let n = c_int::try_from(index + 1).unwrap_or(c_int::MAX);
            // SAFETY: valid file handle; CFITSIO writes the two ints.
            unsafe { sys::ffmahd(self.raw(), n, &mut hdutype, &mut status) };
            if status == 0 { Ok(()) } else { Err(status) }
        }

        fn scan(&mut self, file_len: Option<u64>) -> Result<()> {
            let mut last_end = 0u64;
            for index in 0..MAX_HDUS {
                if let Err(status) = self.goto(index) {
                    if index > 0 && status == END_OF_FILE {
                        clear_messages();
                        // CFITSIO stops at a data unit that runs past the end of the file:
                        // the file was cut short (a missing final padding block is fine).
                        if let Some(len) = file_len
                            && last_end > len
                        {
                            let last = self.hdus.last().cloned();
                            return Err(self.err(
                                last.as_ref(),
                                format!(
                                    "the file is truncated: this HDU's data runs to byte \
                                     {last_end} but the file has {len} bytes"
                                ),
                            ));
                        }
                        break;
                    }
                    let label = format!("HDU {index}");
                    return Err(Error::bad_file(
                        &self.path,
                        Some(&label),
                        format!("cannot be read: {}", cfitsio_message(status)),
                    ));
                }
                let hdu = self.describe(index)?;
                last_end = self.data_end();
                self.hdus.push(hdu);
            }
            Ok(())
        }

        /// Where the current HDU's data unit ends, padding excluded: its start plus
        /// |BITPIX|/8 × GCOUNT × (PCOUNT + NAXIS1 × … × NAXISn), from the header as written
        /// (for a tile-compressed image, the table that holds it).
        fn data_end(&mut self) -> u64 {
            let (mut head, mut start, mut end) = (0i64, 0i64, 0i64);
            let mut status = 0;
            // SAFETY: valid handle; CFITSIO writes the three integers.
            unsafe { sys::ffghadll(self.raw(), &mut head, &mut start, &mut end, &mut status) };
            if status != 0 {
                clear_messages();
                return 0;
            }
            let int = |s: &mut Self, k: &str| -> Option<u64> {
                s.current_key(k)
                    .and_then(|v| v.parse::<i64>().ok())
                    .map(|v| v.unsigned_abs())
            };
            let bytes = (|| {
                let bitpix = int(self, "BITPIX")?;
                let naxis = int(self, "NAXIS")?.min(999);
                let mut n: u64 = if naxis == 0 { 0 } else { 1 };
                for i in 1..=naxis {
                    n = n.checked_mul(int(self, &format!("NAXIS{i}"))?)?;
                }
                let pcount = int(self, "PCOUNT").unwrap_or(0);
                let gcount = int(self, "GCOUNT").unwrap_or(1);
                (bitpix / 8)
                    .checked_mul(gcount)?
                    .checked_mul(n.checked_add(pcount)?)
            })();
            match bytes {
                Some(b) => (start.max(0) as u64).saturating_add(b),
                None => end.max(0) as u64,
            }
        }

        /// Describes the current HDU, number `index`.
        fn describe(&mut self, index: usize) -> Result<Hdu> {
            let label = format!("HDU {index}");
            let fail = |path: &Path, status: c_int| {
                Error::bad_file(path, Some(&label), cfitsio_message(status))
            };
            let mut status = 0;
            let mut hdutype = 0;
            // SAFETY: valid handle; writes one int.
            unsafe { sys::ffghdt(self.raw(), &mut hdutype, &mut status) };
            if status != 0 {
                return Err(fail(&self.path, status));
            }
            let name = self.current_key("EXTNAME").unwrap_or_default();
            let kind = if hdutype == IMAGE_HDU {
                let mut naxis = 0;
                // SAFETY: valid handle; writes one int.
                unsafe { sys::ffgidm(self.raw(), &mut naxis, &mut status) };
                if status != 0 {
                    return Err(fail(&self.path, status));
                }
                let naxis = naxis.clamp(0, 999);
                let mut dims = vec![0i64; naxis as usize];
                if naxis > 0 {
                    // SAFETY: `dims` holds `naxis` elements, which CFITSIO fills.
                    unsafe { sys::ffgiszll(self.raw(), naxis, dims.as_mut_ptr(), &mut status) };
                    if status != 0 {
                        return Err(fail(&self.path, status));
                    }
                }
                let mut bitpix = 0;
                // SAFETY: valid handle; writes one int.
                unsafe { sys::ffgiet(self.raw(), &mut bitpix, &mut status) };
                if status != 0 {
                    return Err(fail(&self.path, status));
                }
                HduKind::Image {
                    shape: dims.iter().map(|&d| d.max(0) as usize).collect(),
                    bitpix,
                }
            } else {
                let mut rows = 0i64;
                let mut ncols = 0;
                // SAFETY: valid handle; each call writes one integer.
                unsafe {
                    sys::ffgnrwll(self.raw(), &mut rows, &mut status);
                    sys::ffgncl(self.raw(), &mut ncols, &mut status);
                }
                if status != 0 {
                    return Err(fail(&self.path, status));
                }
                let mut columns = Vec::with_capacity(ncols.clamp(0, 999) as usize);
                for number in 1..=ncols.clamp(0, 999) {
                    let (mut typecode, mut repeat, mut width) = (0, 0i64, 0i64);
                    // SAFETY: valid handle, `number` is an existing column; writes three
                    // integers.
                    unsafe {
                        sys::ffeqtyll(
                            self.raw(),
                            number,
                            &mut typecode,
                            &mut repeat,
                            &mut width,
                            &mut status,
                        )
                    };
                    if status != 0 {
                        return Err(fail(&self.path, status));
                    }
                    columns.push(Column {
                        number,
                        name: self
                            .current_key(&format!("TTYPE{number}"))
                            .unwrap_or_else(|| format!("col{number}")),
                        unit: self.current_key(&format!("TUNIT{number}")),
                        typecode,
                        repeat: repeat.max(0) as usize,
                        width: width.max(0) as usize,
                    });
                }
                HduKind::Table {
                    rows: rows.max(0) as usize,
                    columns,
                }
            };
            Ok(Hdu { index, name, kind })
        }

        /// A keyword of the current HDU as text (strings unquoted and trimmed, numbers as
        /// written); `None` when absent or empty.
        fn current_key(&mut self, key: &str) -> Option<String> {
            let ckey = CString::new(key).ok()?;
            let mut buf = [0 as c_char; VALUE_LEN];
            let mut status = 0;
            // SAFETY: valid handle; a TSTRING value is at most FLEN_VALUE (71) bytes plus
            // NUL, which `buf` holds; the comment pointer may be null.
            unsafe {
                sys::ffgky(
                    self.raw(),
                    TSTRING,
                    ckey.as_ptr(),
                    buf.as_mut_ptr() as *mut c_void,
                    std::ptr::null_mut(),
                    &mut status,
                )
            };
            if status != 0 {
                clear_messages();
                return None;
            }
            // SAFETY: CFITSIO NUL-terminated the value within `buf`.
            let s = unsafe { CStr::from_ptr(buf.as_ptr()) }
                .to_string_lossy()
                .trim()
                .to_string();
            (!s.is_empty()).then_some(s)
        }

        /// The file's path.
        pub(crate) fn path(&self) -> &Path {
            &self.path
        }

        /// Every HDU, in file order.
        pub(crate) fn hdus(&self) -> &[Hdu] {
            &self.hdus
        }

        /// The first HDU whose EXTNAME is `name` (case-insensitive).
        pub(crate) fn hdu(&self, name: &str) -> Option<Hdu> {
            self.hdus
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .cloned()
        }

        /// The HDU named `name`, or an error saying it is missing.
        pub(crate) fn require(&self, name: &str) -> Result<Hdu> {
            self.hdu(name).ok_or_else(|| {
                let names: Vec<String> = self.hdus.iter().map(Hdu::label).collect();
                self.err(
                    None,
                    format!("has no HDU named {name} (it has {})", names.join(", ")),
                )
            })
        }

        /// Keyword `key` of `hdu` as text (strings unquoted and trimmed, numbers as written).
        pub(crate) fn key(&mut self, hdu: &Hdu, key: &str) -> Option<String> {
            self.goto(hdu.index).ok()?;
            self.current_key(key)
        }

        /// Keyword `key` of `hdu` as a number (Fortran `D` exponents and quoted numbers
        /// too); `None` when absent or not a number.
        pub(crate) fn key_f64(&mut self, hdu: &Hdu, key: &str) -> Option<f64> {
            self.key(hdu, key)
                .and_then(|v| v.replace(['D', 'd'], "E").parse().ok())
        }

        /// Keyword `key` of `hdu` as an integer; `None` when absent or not an integer.
        pub(crate) fn key_i64(&mut self, hdu: &Hdu, key: &str) -> Option<i64> {
            let v = self.key(hdu, key)?;
            v.parse().ok().or_else(|| {
                let f: f64 = v.replace(['D', 'd'], "E").parse().ok()?;
                (f.fract() == 0.0 && f.abs() < 9.0e18).then_some(f as i64)
            })
        }

        fn check_count(&self, hdu: &Hdu, n: Option<usize>) -> Result<usize> {
            match n {
                Some(n) if n <= MAX_VALUES => Ok(n),
                _ => Err(self.err(
                    Some(hdu),
                    format!("holds more than {MAX_VALUES} values, more than a spectrum can"),
                )),
            }
        }

        /// Every pixel of image `hdu`, NAXIS1 fastest, converted to `T` by CFITSIO
        /// (BSCALE/BZERO applied, tile-compressed images decompressed).
        pub(crate) fn read_image<T: Elem>(&mut self, hdu: &Hdu) -> Result<Vec<T>> {
            let Some(shape) = hdu.shape() else {
                return Err(self.err(Some(hdu), "is a table where an image was expected"));
            };
            let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
            let n = self.check_count(hdu, n)?;
            if shape.is_empty() || n == 0 {
                return Ok(Vec::new());
            }
            self.goto(hdu.index)
                .map_err(|s| self.err(Some(hdu), cfitsio_message(s)))?;
            let mut out = vec![T::default(); n];
            let mut status = 0;
            let mut anynul = 0;
            // SAFETY: `out` holds `n` elements of the type CFITSIO is asked to write.
            unsafe {
                sys::ffgpv(
                    self.raw(),
                    T::CODE,
                    1,
                    n as i64,
                    std::ptr::null_mut(),
                    out.as_mut_ptr() as *mut c_void,
                    &mut anynul,
                    &mut status,
                )
            };
            if status != 0 {
                return Err(self.err(
                    Some(hdu),
                    format!("pixels cannot be read: {}", cfitsio_message(status)),
                ));
            }
            Ok(out)
        }

        /// Every pixel of image `hdu` as a bit mask: the low 32 bits of each value (unsigned
        /// and signed integer images alike; CFITSIO cannot decompress tiles to 64 bits, so
        /// 64-bit images are read that way only when not tile-compressed).
        pub(crate) fn read_mask_image(&mut self, hdu: &Hdu) -> Result<Vec<u32>> {
            let bitpix = match hdu.kind {
                HduKind::Image { bitpix, .. } => bitpix,
                HduKind::Table { .. } => 0,
            };
            Ok(match bitpix {
                40 => self.read_image::<u32>(hdu)?,
                64 | 80 => self
                    .read_image::<i64>(hdu)?
                    .into_iter()
                    .map(|v| v as u32)
                    .collect(),
                _ => self
                    .read_image::<i32>(hdu)?
                    .into_iter()
                    .map(|v| v as u32)
                    .collect(),
            })
        }

        fn column_of(&self, hdu: &Hdu, name: &str) -> Result<Column> {
            hdu.column(name).cloned().ok_or_else(|| {
                let reason = if hdu.is_table() {
                    format!("has no column {name}")
                } else {
                    format!("is an image where a table with column {name} was expected")
                };
                self.err(Some(hdu), reason)
            })
        }

        /// Every value of column `name` of table `hdu` (rows × repeat, row-major),
        /// converted to `T` (logical columns give 1 and 0).
        pub(crate) fn read_col<T: Elem>(&mut self, hdu: &Hdu, name: &str) -> Result<Vec<T>> {
            let col = self.column_of(hdu, name)?;
            if col.typecode < 0 {
                return Err(self.err(
                    Some(hdu),
                    format!(
                        "column {} has variable-length arrays, not supported",
                        col.name
                    ),
                ));
            }
            if matches!(col.typecode, TSTRING | TCOMPLEX | TDBLCOMPLEX | TBIT) {
                return Err(self.err(
                    Some(hdu),
                    format!(
                        "column {} holds {} where numbers were expected",
                        col.name,
                        match col.typecode {
                            TSTRING => "text",
                            TBIT => "bits",
                            _ => "complex numbers",
                        }
                    ),
                ));
            }
            if col.typecode == TLOGICAL {
                let v: Vec<i8> = self.read_raw(hdu, &col, TLOGICAL)?;
                return Ok(v
                    .into_iter()
                    .map(|b| T::from_f64(if b != 0 { 1.0 } else { 0.0 }))
                    .collect());
            }
            self.read_raw(hdu, &col, T::CODE)
        }

        /// Column `name` of table `hdu`, which must hold one value per row, converted to `T`.
        pub(crate) fn read_scalars<T: Elem>(&mut self, hdu: &Hdu, name: &str) -> Result<Vec<T>> {
            let col = self.column_of(hdu, name)?;
            if col.repeat != 1 {
                return Err(self.err(
                    Some(hdu),
                    format!(
                        "column {} holds {} values per row where one was expected",
                        col.name, col.repeat
                    ),
                ));
            }
            self.read_col(hdu, name)
        }

        fn read_raw<T: Copy + Default>(
            &mut self,
            hdu: &Hdu,
            col: &Column,
            code: c_int,
        ) -> Result<Vec<T>> {
            let n = hdu.rows().checked_mul(col.repeat);
            let n = self.check_count(hdu, n)?;
            if n == 0 {
                return Ok(Vec::new());
            }
            self.goto(hdu.index)
                .map_err(|s| self.err(Some(hdu), cfitsio_message(s)))?;
            let mut out = vec![T::default(); n];
            let mut status = 0;
            let mut anynul = 0;
            // SAFETY: `out` holds `n` elements of the type `code` names (callers pair them:
            // T::CODE with T, TLOGICAL with i8).
            unsafe {
                sys::ffgcv(
                    self.raw(),
                    code,
                    col.number,
                    1,
                    1,
                    n as i64,
                    std::ptr::null_mut(),
                    out.as_mut_ptr() as *mut c_void,
                    &mut anynul,
                    &mut status,
                )
            };
            if status != 0 {
                return Err(self.err(
                    Some(hdu),
                    format!(
                        "column {} cannot be read: {}",
                        col.name,
                        cfitsio_message(status)
                    ),
                ));
            }
            Ok(out)
        }

        /// The first string of column `name` in every row of table `hdu`, trimmed.
        pub(crate) fn read_strings(&mut self, hdu: &Hdu, name: &str) -> Result<Vec<String>> {
            let col = self.column_of(hdu, name)?;
            if col.typecode != TSTRING {
                return Err(self.err(Some(hdu), format!("column {} does not hold text", col.name)));
            }
            let rows = hdu.rows();
            let width = col.width.clamp(1, 1 << 16);
            let per_row = (col.repeat / width).max(1);
            let n = rows.checked_mul(per_row);
            let n = self.check_count(hdu, n.and_then(|n| n.checked_mul(width + 1)))? / (width + 1);
            if n == 0 {
                return Ok(Vec::new());
            }
            self.goto(hdu.index)
                .map_err(|s| self.err(Some(hdu), cfitsio_message(s)))?;
            let mut bufs: Vec<Vec<c_char>> = (0..n).map(|_| vec![0; width + 1]).collect();
            let mut ptrs: Vec<*mut c_char> = bufs.iter_mut().map(|b| b.as_mut_ptr()).collect();
            let mut nul = [0 as c_char; 1];
            let mut status = 0;
            let mut anynul = 0;
            // SAFETY: `ptrs` holds `n` pointers to buffers of `width + 1` bytes, each enough
            // for one string of the column plus its NUL.
            unsafe {
                sys::ffgcvs(
                    self.raw(),
                    col.number,
                    1,
                    1,
                    n as i64,
                    nul.as_mut_ptr(),
                    ptrs.as_mut_ptr(),
                    &mut anynul,
                    &mut status,
                )
            };
            if status != 0 {
                return Err(self.err(
                    Some(hdu),
                    format!(
                        "column {} cannot be read: {}",
                        col.name,
                        cfitsio_message(status)
                    ),
                ));
            }
            Ok(bufs
                .iter()
                .step_by(per_row)
                .map(|b| {
                    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
                    let bytes: Vec<u8> = b[..end].iter().map(|&c| c as u8).collect();
                    String::from_utf8_lossy(&bytes).trim().to_string()
                })
                .collect())
        }

        /// Column `name` of `hdu` as 64-bit identifiers, one per row: integers, unsigned
        /// 64-bit integers (which must fit in `i64`) or decimal text (as SDSS writes
        /// SPECOBJID).
        pub(crate) fn read_ids(&mut self, hdu: &Hdu, name: &str) -> Result<Vec<i64>> {
            let col = self.column_of(hdu, name)?;
            if col.repeat != 1 && !col.is_string() {
                return Err(self.err(
                    Some(hdu),
                    format!(
                        "column {} holds {} values per row, not one",
                        col.name, col.repeat
                    ),
                ));
            }
            if col.is_string() {
                let text = self.read_strings(hdu, name)?;
                return text
                    .iter()
                    .enumerate()
                    .map(|(row, t)| {
                        parse_id(t).ok_or_else(|| {
                            self.err(
                                Some(hdu),
                                format!(
                                    "column {} row {row}: {t:?} is not a 64-bit integer",
                                    col.name
                                ),
                            )
                        })
                    })
                    .collect();
            }
            if col.typecode == TULONGLONG {
                let v: Vec<u64> = self.read_col(hdu, name)?;
                return v
                    .iter()
                    .enumerate()
                    .map(|(row, &x)| {
                        i64::try_from(x).map_err(|_| {
                            self.err(
                                Some(hdu),
                                format!(
                                    "column {} row {row}: {x} does not fit a signed 64-bit \
                                     integer",
                                    col.name
                                ),
                            )
                        })
                    })
                    .collect();
            }
            self.read_col(hdu, name)
        }
    }

    /// A decimal integer that fits `i64` (unsigned values up to `i64::MAX` too).
    pub(crate) fn parse_id(t: &str) -> Option<i64> {
        let t = t.trim();
        t.parse::<i64>()
            .ok()
            .or_else(|| t.parse::<u64>().ok().and_then(|u| i64::try_from(u).ok()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn data_dir() -> PathBuf {
        PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../../shared/data/spectra"
        ))
    }

    #[test]
    fn mjd_to_iso_matches_astropy() {
        // astropy: Time(59311.34644749, format='mjd').isot == '2021-04-07T08:18:53.063'
        assert_eq!(
            mjd_to_iso(59311.34644749).as_deref(),
            Some("2021-04-07T08:18:53.063")
        );
        // Time(59324.24757588, format='mjd').isot == '2021-04-20T05:56:30.556'
        assert_eq!(
            mjd_to_iso(59324.24757588).as_deref(),
            Some("2021-04-20T05:56:30.556")
        );
        // Time(51544.0, format='mjd').isot == '2000-01-01T00:00:00.000'
        assert_eq!(
            mjd_to_iso(51544.0).as_deref(),
            Some("2000-01-01T00:00:00.000")
        );
        // Time(0, format='mjd').isot == '1858-11-17T00:00:00.000'
        assert_eq!(mjd_to_iso(0.0).as_deref(), Some("1858-11-17T00:00:00.000"));
        assert_eq!(mjd_to_iso(f64::NAN), None);
        assert_eq!(mjd_to_iso(1e300), None);
    }

    #[test]
    fn detects_desi_by_content() {
        let dir = data_dir();
        let coadd = dir.join("desi_coadd-sv3-dark-26065.fits");
        if !coadd.exists() {
            eprintln!("skipped: {} is absent", coadd.display());
            return;
        }
        assert_eq!(detect(&coadd).unwrap(), Kind::Desi);
        assert_eq!(
            detect(&dir.join("desi_spectra-5-169-thru20210419.fits")).unwrap(),
            Kind::Desi
        );
        // The same content under another name is still DESI.
        let tmp = tempfile::tempdir().unwrap();
        let renamed = tmp.path().join("whatever.dat");
        std::fs::copy(&coadd, &renamed).unwrap();
        assert_eq!(detect(&renamed).unwrap(), Kind::Desi);
        assert_eq!(read(&renamed, None).unwrap().len(), 5);
    }

    #[test]
    fn refuses_what_is_not_fits_or_votable() {
        let tmp = tempfile::tempdir().unwrap();
        let empty = tmp.path().join("empty.fits");
        std::fs::write(&empty, b"").unwrap();
        assert!(detect(&empty).unwrap_err().to_string().contains("empty"));
        let text = tmp.path().join("notes.fits");
        std::fs::write(&text, b"hello, world\n").unwrap();
        let e = detect(&text).unwrap_err().to_string();
        assert!(e.contains("neither a FITS file nor a VOTable"), "{e}");
        let missing = tmp.path().join("missing.fits");
        assert!(matches!(detect(&missing), Err(Error::Io { .. })));
    }

    #[test]
    fn truncated_and_garbled_fits_are_errors_not_panics() {
        let coadd = data_dir().join("desi_coadd-sv3-dark-26065.fits");
        if !coadd.exists() {
            eprintln!("skipped: {} is absent", coadd.display());
            return;
        }
        let bytes = std::fs::read(&coadd).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        // Cut at many places: headers, data units, mid-card.
        for cut in [
            80,
            2880,
            2880 * 3 + 17,
            bytes.len() / 3,
            bytes.len() / 2,
            bytes.len() - 2880 * 2,
        ] {
            let p = tmp.path().join(format!("cut{cut}.fits"));
            std::fs::write(&p, &bytes[..cut]).unwrap();
            let r = read(&p, None);
            assert!(r.is_err(), "cut at {cut} read without error");
        }
        // Only the final padding missing: every data unit is whole, so the file reads.
        let p = tmp.path().join("unpadded.fits");
        std::fs::write(&p, &bytes[..bytes.len() - 1]).unwrap();
        assert_eq!(read(&p, None).unwrap().len(), 5);
        // Flip bytes in the middle of headers.
        let mut garbled = bytes.clone();
        for b in garbled.iter_mut().skip(2880).step_by(997).take(200) {
            *b = b'#';
        }
        let p = tmp.path().join("garbled.fits");
        std::fs::write(&p, &garbled).unwrap();
        let _ = read(&p, None);
    }

    /// Every reader on cut and corrupted files (compressed masks included): errors are
    /// fine, panics are not.
    #[test]
    fn fuzzed_files_never_panic() {
        let spectra = data_dir().join("desi_spectra-sv3-dark-26065.fits");
        if !spectra.exists() {
            eprintln!("skipped: {} is absent", spectra.display());
            return;
        }
        let bytes = std::fs::read(&spectra).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("fuzz.fits");
        let try_all = |p: &Path| {
            let _ = detect(p);
            let _ = read(p, None);
            let _ = crate::desi::read(p, None);
            let _ = crate::sdss::read(p);
            let _ = crate::generic::read(p);
            let _ = crate::desi::read_zcatalog(p);
        };
        for i in 1..24 {
            std::fs::write(&p, &bytes[..bytes.len() * i / 24]).unwrap();
            try_all(&p);
        }
        // A linear congruential generator picks the bytes to overwrite.
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            (x >> 33) as usize
        };
        for _ in 0..24 {
            let mut b = bytes.clone();
            for _ in 0..64 {
                let at = next() % b.len();
                b[at] = (next() % 256) as u8;
            }
            std::fs::write(&p, &b).unwrap();
            try_all(&p);
        }
    }
}
