"""`c3d probe`: the paper's linear-SVM protocol on features from `c3d extract` (PCA and t-SNE optional).

    c3d probe --features DIR --train-list train.txt --test-list test.txt [--pca 10] [--tsne tsne.png] [--json]
    c3d probe --features DIR --data UCF101/ [--split 1]
"""

from __future__ import annotations

import argparse

HELP = "linear SVM on video-mean, L2-normalised features (the paper's protocol), with optional PCA and t-SNE"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--features", required=True, help="output folder of `c3d extract` (fc6 in the paper)")
    parser.add_argument("--train-list", help="lines '<video> <label>' of the train split")
    parser.add_argument("--test-list", help="lines '<video> <label>' of the test split")
    parser.add_argument("--data", help="a dataset `c3d train` reads (UCF-101/HMDB-51 folder, prepared frames, ...) "
                                       "instead of the two lists")
    parser.add_argument("--split", type=int, default=1, help="split of --data (default: 1)")
    parser.add_argument("--splits", metavar="DIR", default=None,
                        help="folder with the official split files, if not inside or beside --data")
    parser.add_argument("--pca", type=int, default=None, metavar="K", help="reduce to K dimensions with PCA first")
    parser.add_argument("--svm-c", type=float, default=1.0, help="the linear SVM's C (default: 1.0)")
    parser.add_argument("--tsne", metavar="PNG", help="save a t-SNE plot of the test videos coloured by class")
    parser.add_argument("--allow-missing", action="store_true", help="leave out listed videos without features")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--out", metavar="JSON", help="also write the result as JSON to this file")


def run(args: argparse.Namespace) -> int:
    import json

    from c3dnet.errors import ConfigError
    from c3dnet.fileio import atomic_write_text
    from c3dnet.probe import LabelledVideo, gather_features, linear_probe, read_label_list, tsne_plot

    class_names = None
    if args.data:
        if args.train_list or args.test_list:
            raise ConfigError("give either --data or --train-list/--test-list, not both")
        from c3dnet.data.sources import load_source

        splits = []
        for subset in ("train", "test"):
            source = load_source(args.data, subset=subset, split=args.split, splits_dir=args.splits)
            splits.append([LabelledVideo(str(r.path), r.label, f"{args.data} ({subset} split {args.split})")
                           for r in source.records])
            class_names = source.class_names
        train, test = splits
    elif args.train_list and args.test_list:
        train, test = read_label_list(args.train_list), read_label_list(args.test_list)
    else:
        raise ConfigError("c3d probe needs --train-list and --test-list (lines '<video> <label>'), or --data DATASET")
    if args.pca is not None and args.pca < 1:
        raise ConfigError(f"--pca must be >= 1, got {args.pca}")
    train_x, train_y, miss_train = gather_features(args.features, train, args.allow_missing)
    test_x, test_y, miss_test = gather_features(args.features, test, args.allow_missing)
    result, _ = linear_probe(train_x, train_y, test_x, test_y, pca=args.pca, svm_c=args.svm_c)
    report = {**result.to_dict(), "missing_train": len(miss_train), "missing_test": len(miss_test)}
    if args.tsne:
        tsne_plot(test_x, test_y, args.tsne, class_names)
        report["tsne"] = args.tsne
    if args.out:
        atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        pca = f", PCA to {result.dim}" if result.pca else ""
        print(f"linear SVM on {result.num_train} train / {result.num_test} test videos ({result.input_dim} dims{pca}): "
              f"accuracy {100 * result.accuracy:.2f}%, mean class accuracy {100 * result.mean_class_accuracy:.2f}%")
        if args.tsne:
            print(f"t-SNE plot: {args.tsne}")
    return 0
