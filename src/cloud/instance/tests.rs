use super::*;

#[test]
fn an_expiry_in_the_past_has_passed_and_an_unreadable_one_has_not() {
    let instance = Instance::example("i-1", State::Stopped);
    let at = |expires_at: Option<&str>| Owned {
        instance: instance.clone(),
        region: "eu-central-1".into(),
        dir: None,
        host: None,
        this_machine: true,
        launched: None,
        expires_at: expires_at.map(str::to_string),
        launch: None,
    };
    assert!(at(Some("2020-01-01T00:00:00Z")).expired());
    assert!(!at(Some("2999-01-01T00:00:00Z")).expired());
    assert!(!at(Some("tomorrow")).expired());
    assert!(!at(None).expired());
}
