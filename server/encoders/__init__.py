"""Text encoder backends behind one small interface (see ``base.Encoder``)."""
