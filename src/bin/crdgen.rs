//! Writes the CRDs generated from `kubedirector::api` into a directory (default `crds/`).

use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "crds".to_string()));
    std::fs::create_dir_all(&dir)?;
    for (file, crd) in kubedirector::api::crds() {
        let path = dir.join(file);
        std::fs::write(&path, kubedirector::api::crd_yaml(&crd)?)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
