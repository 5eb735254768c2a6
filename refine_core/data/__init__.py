"""From episodes to token sequences: the annotation set on disk (`annotation_set`), the training
text of a reasoning (`reasoning_formats`), episodes + annotations → training samples (`samples`)
and samples → labelled, padded sequences (`collate`)."""
