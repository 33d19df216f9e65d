"""``valid_metric`` as a named trade-off of metrics, e.g. ``ndcg@10 - 0.5 * ndcggap@10``:
a sum of terms ``[coefficient *] metric``, chosen on the validation split (RecBole's trainers
use it once :func:`allow_in_recbole_trainers` is applied)."""
import functools

from recbole_bifair.errors import BiFairInputError


def parse_valid_metric(expression):
    """``"ndcg@10 - 0.5*ndcggap@10" -> [(1.0, "ndcg@10"), (-0.5, "ndcggap@10")]`` (lower-cased names)."""
    terms = []
    for raw in expression.replace(" ", "").lower().replace("-", "+-").split("+"):
        if not raw:
            continue
        sign = -1.0 if raw.startswith("-") else 1.0
        coefficient, _, name = raw.lstrip("-").rpartition("*")
        try:
            weight = sign * (float(coefficient) if coefficient else 1.0)
        except ValueError:
            raise BiFairInputError(
                f"valid_metric '{expression}': '{coefficient}' is not a number; write terms as "
                "[coefficient *] metric, e.g. 'ndcg@10 - 0.5 * ndcggap@10'."
            ) from None
        if not name:
            raise BiFairInputError(f"valid_metric '{expression}' has an empty term.")
        terms.append((weight, name))
    if not terms:
        raise BiFairInputError("valid_metric is empty; name a metric such as ndcg@10.")
    return terms


def combined_valid_score(valid_result, expression):
    """The value of ``expression`` over the metrics in ``valid_result``."""
    terms = parse_valid_metric(expression)
    missing = [name for _, name in terms if name not in valid_result]
    if missing:
        raise BiFairInputError(
            f"valid_metric '{expression}' names {', '.join(missing)}, which the evaluation does not "
            f"report; add it to `metrics`/`topk`. Reported: {', '.join(valid_result)}."
        )
    return sum(weight * valid_result[name] for weight, name in terms)


def allow_in_recbole_trainers():
    """Lets every RecBole trainer early-stop on a trade-off such as
    ``valid_metric: "ndcg@10 - 0.5 * ndcggap@10"``: RecBole's trainer module looks
    ``valid_metric`` up in the result dict; an expression is evaluated instead (idempotent)."""
    import recbole.trainer.trainer as trainer_module

    lookup = trainer_module.calculate_valid_score
    if getattr(lookup, "_allows_trade_offs", False):
        return

    @functools.wraps(lookup)
    def calculate_valid_score(valid_result, valid_metric=None):
        if valid_metric is None or valid_metric in valid_result:
            return lookup(valid_result, valid_metric)
        return combined_valid_score(valid_result, valid_metric)

    calculate_valid_score._allows_trade_offs = True
    trainer_module.calculate_valid_score = calculate_valid_score
