"""A RecBole ``Collector`` that also gathers each evaluated target's value, for :class:`~.metrics.GMV`."""

from __future__ import annotations

from recbole.evaluator import Collector

from recbole_oneranker.evaluator.metrics import VALUE_DATA_KEY


class ValueCollector(Collector):
    """Collects ``interaction[value_field]`` of every evaluated row when a metric needs ``data.value``."""

    def __init__(self, config):
        super().__init__(config)
        self.value_field = config["value_field"]
        if self.register.need(VALUE_DATA_KEY) and not self.value_field:
            raise ValueError(
                "metric GMV needs a value: set 'value_field' to a float column of the .inter file "
                "(the dataset configs in dataset_configs/ declare one where the data has it)"
            )

    def eval_batch_collect(self, scores_tensor, interaction, positive_u, positive_i):
        super().eval_batch_collect(scores_tensor, interaction, positive_u, positive_i)
        if self.register.need(VALUE_DATA_KEY):
            if self.value_field not in interaction:
                raise ValueError(
                    f"value_field '{self.value_field}' is not in the evaluation batch; "
                    f"add it to load_col (inter) in the dataset config"
                )
            self.data_struct.update_tensor(VALUE_DATA_KEY, interaction[self.value_field].float().to(self.device))

    def get_data_struct(self):
        returned = super().get_data_struct()
        # RecBole resets only rec.* and data.label between evaluations; without this, values would pile up
        # across epochs and the second evaluation would compare n users with 2n values.
        if VALUE_DATA_KEY in self.data_struct:
            del self.data_struct[VALUE_DATA_KEY]
        return returned
