() => {
  // Esc stops the answer being written, wherever the focus is (Gradio has no key binding for it).
  document.addEventListener('keydown', (e) => {
    if (e.key !== 'Escape') return;
    const stop = document.querySelector('#stop');
    if (stop) { stop.click(); }
  });
  // On a phone the conversation list is a drawer: closed at start, and closed again once a chat is picked.
  const narrow = () => window.innerWidth < 768;
  const closeDrawer = () => {
    const bar = document.querySelector('#conv-sidebar');
    if (narrow() && bar && bar.classList.contains('open')) {
      const toggle = bar.querySelector('.toggle-button');
      if (toggle) { toggle.click(); }
    }
  };
  const started = Date.now();
  const waitForBar = setInterval(() => {
    if (document.querySelector('#conv-sidebar .toggle-button') || Date.now() - started > 30000) {
      clearInterval(waitForBar);
      closeDrawer();
    }
  }, 100);
  document.addEventListener('click', (e) => {
    if (e.target.closest && e.target.closest('#conv-list label, #new-chat, #conv-delete')) {
      setTimeout(closeDrawer, 50);
    }
  });
}
