//! `tfkd list-models`.

pub fn run(classes: usize) -> anyhow::Result<()> {
    println!("{:<24} {:>8} {:>14}  description", "name", "input", "parameters");
    for name in tfkd_zoo::list() {
        let entry = tfkd_zoo::entry(name)?;
        for &input in entry.inputs {
            let count = tfkd_zoo::param_count(name, classes, input)?;
            println!("{:<24} {:>8} {:>14}  {}", name, input.side(), count, entry.description);
        }
    }
    Ok(())
}
