//! Issue 12: `stptf explain` from the command line on a fine-tuned model:
//! the files it writes (with and without the heatmap, with and without a
//! region table), that its flags act, that it never replaces a file without
//! `--force`, and that a bad region table is refused with its line before
//! anything is written. (The proof that the importance finds a planted
//! community is tests/explain_planted.rs.)

use std::path::Path;
use std::process::{Command, Output};

fn stptf(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_stptf"))
        .args(args)
        .output()
        .expect("run stptf")
}

fn ok(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stptf failed: {stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fails(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Scans listed in importance_regions.csv for one region (summed over classes).
fn explained_scans(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("importance_regions.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .filter(|l| l.starts_with("0,"))
        .map(|l| l.rsplit(',').next().unwrap().parse::<usize>().unwrap())
        .sum()
}

#[test]
fn explain_writes_its_maps_and_its_flags_act() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    ok(&stptf(&[
        "synth",
        "--out",
        p(&data),
        "--scans",
        "24",
        "--regions",
        "6",
        "--length",
        "36",
        "--seed",
        "4",
        "--difficulty",
        "0.1",
    ]));
    let ds = data.join("dataset.toml");
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/configs/tiny.toml");
    let model = tmp.path().join("ft");
    ok(&stptf(&[
        "finetune",
        "--config",
        p(&config),
        "--dataset",
        p(&ds),
        "--out",
        p(&model),
        "--quiet",
        "--set",
        "finetune.epochs=1",
    ]));

    // Defaults: every scan, the heatmap, no region table: no glass brain.
    let out = tmp.path().join("explain-all");
    let printed = ok(&stptf(&[
        "explain",
        "--model",
        p(&model),
        "--dataset",
        p(&ds),
        "--out",
        p(&out),
    ]));
    assert!(printed.contains("explained 24 of 24 scans"), "{printed}");
    assert!(printed.contains("precision@"), "{printed}");
    assert_eq!(
        files_in(&out),
        vec![
            "importance.json",
            "importance_cells.csv",
            "importance_heatmap.svg",
            "importance_regions.csv",
            "importance_regions.svg",
            "importance_time.csv",
        ]
    );
    assert_eq!(explained_scans(&out), 24);
    let heatmap = std::fs::read_to_string(out.join("importance_heatmap.svg")).unwrap();
    // Six regions x ceil(32 / 8) = 4 segments of the crop.
    assert_eq!(heatmap.matches("class=\"cell\"").count(), 6 * 4);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("importance.json")).unwrap())
            .unwrap();
    assert_eq!(json["scan_ids"].as_array().unwrap().len(), 24);
    assert_eq!(json["importance"]["perturbation"], "shuffle");

    // Nothing is replaced without --force, and the refusal changes nothing.
    let before = std::fs::read(out.join("importance_regions.csv")).unwrap();
    let refused = fails(&stptf(&[
        "explain",
        "--model",
        p(&model),
        "--dataset",
        p(&ds),
        "--out",
        p(&out),
        "--perturbation",
        "zero",
    ]));
    assert!(
        refused.contains("importance.json") && refused.contains("--force"),
        "{refused}"
    );
    assert_eq!(
        std::fs::read(out.join("importance_regions.csv")).unwrap(),
        before
    );
    ok(&stptf(&[
        "explain",
        "--model",
        p(&model),
        "--dataset",
        p(&ds),
        "--out",
        p(&out),
        "--perturbation",
        "zero",
        "--force",
    ]));
    assert_ne!(
        std::fs::read(out.join("importance_regions.csv")).unwrap(),
        before
    );

    // --max-scans takes a stratified subset; --heatmap false drops the cells.
    let out = tmp.path().join("explain-some");
    let printed = ok(&stptf(&[
        "explain",
        "--model",
        p(&model),
        "--dataset",
        p(&ds),
        "--out",
        p(&out),
        "--max-scans",
        "8",
        "--heatmap",
        "false",
    ]));
    assert!(printed.contains("explained 8 of 24 scans"), "{printed}");
    assert_eq!(explained_scans(&out), 8);
    let classes: Vec<usize> = std::fs::read_to_string(out.join("importance_regions.csv"))
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("0,"))
        .map(|l| l.rsplit(',').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(
        classes,
        vec![4, 4],
        "synth alternates labels: 4 of each class"
    );
    assert!(!out.join("importance_cells.csv").exists());
    assert!(!out.join("importance_heatmap.svg").exists());

    // A region table names the regions and, with coordinates, adds the brain.
    std::fs::write(
        data.join("regions.csv"),
        "index,name,x,y,z\n1,V1,-10,-90,0\n2,V2,10,-90,0\n3,M1,-40,-20,60\n4,M2,40,-20,60\n5,PFC,0,50,10\n6,PCC,0,-50,30\n",
    )
    .unwrap();
    let description = std::fs::read_to_string(&ds).unwrap();
    let named = data.join("named.toml");
    std::fs::write(&named, format!("regions = \"regions.csv\"\n{description}")).unwrap();
    let out = tmp.path().join("explain-named");
    ok(&stptf(&[
        "explain",
        "--model",
        p(&model),
        "--dataset",
        p(&named),
        "--out",
        p(&out),
        "--max-scans",
        "4",
        "--heatmap",
        "false",
    ]));
    let brain = std::fs::read_to_string(out.join("importance_brain.svg")).unwrap();
    assert_eq!(
        brain.matches("class=\"top\"").count(),
        3 * 6,
        "six regions in three views"
    );
    let regions = std::fs::read_to_string(out.join("importance_regions.csv")).unwrap();
    assert!(
        regions.lines().any(|l| l.starts_with("4,PFC,")),
        "{regions}"
    );

    // A bad table is refused with its line, and nothing is written.
    std::fs::write(data.join("regions.csv"), "index,name\n1,a\n1,b\n").unwrap();
    let out = tmp.path().join("explain-bad");
    let refused = fails(&stptf(&[
        "explain",
        "--model",
        p(&model),
        "--dataset",
        p(&named),
        "--out",
        p(&out),
    ]));
    assert!(
        refused.contains("regions.csv: line 3: invalid region table: region 1 is listed twice"),
        "{refused}"
    );
    assert!(!out.exists(), "a refused explain created {}", out.display());

    // An unknown perturbation is a usage error that names the choices.
    let usage = stptf(&[
        "explain",
        "--model",
        p(&model),
        "--dataset",
        p(&ds),
        "--perturbation",
        "blur",
    ]);
    assert_eq!(usage.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&usage.stderr);
    assert!(
        stderr.contains("expected one of shuffle, zero, shift, noise"),
        "{stderr}"
    );
}

#[test]
fn evaluate_explains_every_fold_and_compares_them() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    ok(&stptf(&[
        "synth",
        "--out",
        p(&data),
        "--scans",
        "32",
        "--regions",
        "6",
        "--length",
        "36",
        "--seed",
        "5",
        "--difficulty",
        "0.1",
    ]));
    let ds = data.join("dataset.toml");
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/configs/tiny.toml");
    let run = tmp.path().join("eval");
    ok(&stptf(&[
        "evaluate",
        "--config",
        p(&config),
        "--dataset",
        p(&ds),
        "--out",
        p(&run),
        "--quiet",
        "--set",
        "pretrain.epochs=0",
        "--set",
        "finetune.epochs=1",
        "--set",
        "explain.in_evaluate=true",
        "--set",
        "explain.max_scans=4",
        "--set",
        "explain.heatmap=false",
    ]));
    for fold in ["fold-1", "fold-2"] {
        let dir = run.join(fold);
        assert_eq!(explained_scans(&dir), 4, "{fold}");
        assert!(dir.join("importance.json").exists(), "{fold}");
        assert!(!dir.join("importance_cells.csv").exists(), "{fold}");
    }
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    let importance = &summary["importance"];
    assert_eq!(importance["folds"], serde_json::json!(["1", "2"]));
    assert_eq!(importance["pairs"].as_array().unwrap().len(), 1);
    let rho = importance["mean_pairwise_spearman"].as_f64().unwrap();
    assert!((-1.0..=1.0).contains(&rho), "{rho}");
    assert_eq!(importance["regions"].as_array().unwrap().len(), 6);
    let csv = std::fs::read_to_string(run.join("importance_folds.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 6);
    assert!(csv.starts_with("region,name,mean_rank,mean_score,top10_folds,fold_1,fold_2\n"));
    assert!(run.join("importance_regions.svg").exists());
}
