//! Find Python tests and split them into steps (see DESIGN.md, "Steps").
