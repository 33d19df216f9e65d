from recbole_bifair.model.llm_enhanced import build_llm_model, split_family_name

__all__ = ["build_llm_model", "split_family_name"]
