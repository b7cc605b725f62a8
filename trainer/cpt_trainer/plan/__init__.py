"""The training plan: stages and their learning-rate schedules.

The `stages` a job trains through (each with its mixture, length and learning-rate
schedule, the whole job as one stage without spec.stages) and the `schedule` functions (pure in the step).
"""
