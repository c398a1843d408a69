"""The paper's recipe (Hinton, Vinyals, Dean 2015) on the IDX datasets: its MLP and small CNN
models, the teacher and student training loops, augmentation and mixup, the experiments of
`make report`, their plots, the recipe choice on validation rows, and the summary table."""
