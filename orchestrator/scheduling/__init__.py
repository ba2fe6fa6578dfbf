"""The job queue: durable records, the admission policy, preemption, Ray Jobs underneath.

``spec`` (the pipeline's scheduling section), ``demand`` (resources from a spec), ``store``
(SQLite), ``policy`` (order, gang admission, preemption), ``scheduler`` (the loop),
``ray_jobs`` (the Jobs API facade), ``server`` (``orch server``). Modules are imported
where used: the pipeline spec imports ``scheduling.spec`` and must not pull in Ray.
"""
