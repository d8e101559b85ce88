"""Meta-learner, SHAP explanations, retrieval and candidate shortlists."""
