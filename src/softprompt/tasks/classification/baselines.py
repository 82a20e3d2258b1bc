"""What many users would pick instead of a language model: TF-IDF features + logistic regression."""

from __future__ import annotations

from softprompt.data.records import Example

# Share of non-ASCII letters above which texts are treated as unsegmented (Chinese, Japanese):
# then character n-grams replace word n-grams.
NON_ASCII_SHARE = 0.3


def _mostly_non_ascii(examples: list[Example]) -> bool:
    text = "".join(e.text for e in examples[:200])
    letters = [c for c in text if c.isalpha()]
    return bool(letters) and sum(not c.isascii() for c in letters) / len(letters) > NON_ASCII_SHARE


def tfidf_accuracy(train: list[Example], test: list[Example], seed: int = 0) -> tuple[float, str]:
    """Test accuracy of TF-IDF + logistic regression fitted on ``train``, and a description.

    Word 1-2-grams, or character 1-3-grams for unsegmented scripts; sublinear TF; C=4.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    chars = _mostly_non_ascii(train)
    analyzer, ngrams = ("char", (1, 3)) if chars else ("word", (1, 2))
    vectorizer = TfidfVectorizer(analyzer=analyzer, ngram_range=ngrams, sublinear_tf=True)
    features = vectorizer.fit_transform([e.text for e in train])
    model = LogisticRegression(max_iter=2000, C=4.0, random_state=seed).fit(features, [e.label for e in train])
    predicted = model.predict(vectorizer.transform([e.text for e in test]))
    correct = sum(p == e.label for p, e in zip(predicted, test, strict=True))
    return correct / len(test), f"TF-IDF ({analyzer} {ngrams[0]}-{ngrams[1]}-grams) + logistic regression"
