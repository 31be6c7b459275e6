//! `meridian alerts`: alert packets (Rubin, ZTF) read from Avro and split into the tables
//! they carry.

use std::path::PathBuf;

use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub enum AlertsCommand {
    /// Split Avro alert files (object container files, as brokers and Rubin's samples
    /// ship them) into their tables: DiaSource, DiaForcedSource, DiaObject and Cutout for
    /// Rubin alerts, ZtfCandidate, ZtfUpperLimit and Cutout for ZTF's; one Parquet file
    /// per table in `--out`, each source once however many alerts repeat it.
    Convert {
        /// Avro object container files of one survey's alerts.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Directory the tables are written to (created if missing).
        #[arg(long)]
        out: PathBuf,
    },
}

pub fn run(cmd: AlertsCommand) -> anyhow::Result<()> {
    match cmd {
        AlertsCommand::Convert { files, out } => {
            for w in meridian_alerts::convert::convert(&files, &out)? {
                println!("{}\t{} rows\t{}", w.table, w.rows, w.path.display());
            }
            Ok(())
        }
    }
}
