//! Helper for the overlay crash suite: writes generation after generation of files through an
//! overlay and commits each, printing `committing <generation>` before `commit` and
//! `committed <generation>` once it has returned, until killed.
//!
//! Each generation `g` rewrites `file-<i>` (for every `i` below [`FILES`]) with
//! [`content`]`(g, i)`, writes `old-<g>`, removes `old-<g - 1>`, then commits.
//!
//! Usage: `overlay-commit-storm <lower> <work>`

use anyhow::Result;
use capsid_integration_tests::overlay_storm::{FILES, content, file, old};
use capsid_vfs::{OverlayVfs, Vfs};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [lower, work] = args.as_slice() else {
        anyhow::bail!("usage: overlay-commit-storm <lower> <work>");
    };
    let overlay = OverlayVfs::open(lower.as_ref(), work.as_ref())?;
    for generation in 1u64.. {
        for i in 0..FILES {
            overlay.write(&file(i)?, content(generation, i)).await?;
        }
        overlay.write(&old(generation)?, Vec::new()).await?;
        if generation > 1 {
            overlay.remove_file(&old(generation - 1)?).await?;
        }
        println!("committing {generation}");
        overlay.commit().await?;
        println!("committed {generation}");
    }
    Ok(())
}
