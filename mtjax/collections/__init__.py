"""The real task collections, registered as SeqIO tasks and mixtures under their authors' names.

One module per collection, each built on `hf_tasks` (SeqIO tasks over Hugging Face datasets,
`hf_datasets` finds and reads them):

  t0        P3 / T0: PromptSource templates over T0's datasets; t0_train, t0+_train, t0++_train,
            t0_eval_score_eval, ... (T0's task names, blacklist and rate rule)
  glue      GLUE and SuperGLUE the T5 way: glue_v002_proportional, super_glue_v102_proportional
  flan2022  Flan 2022's pre-rendered submixes: flan2022 and its submixes, re-weightable
  xp3       xP3 (mT0 / BLOOMZ) per-language files and the mT0 held-out suite

(`prerendered` is what flan2022 and xp3 share: tasks over rows that already are examples.)

Import a module (`data.modules=("mtjax.collections.t0",)`) to register it; where its data and
templates come from is `data.hf_data_dir` / `data.promptsource_dir` (or their environment
variables, `mtjax.data.modules.option`). `catalog` says which module registers a name.
"""
