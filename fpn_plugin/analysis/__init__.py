"""Looking at a dataset and a model before and after training: how boxes fall on the pyramid's
levels (Eq. 1), how the anchors cover them, a suggested fit, and pictures of both."""
